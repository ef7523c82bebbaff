"""A destroy waits for the cloud disks of the claims it deleted before the storage driver and the nodes go.

A claim's volume outlives the claim: with `reclaimPolicy: Delete` the PersistentVolume goes `Released` and the CSI
driver's external-provisioner deletes the disk afterwards (after the attach-detach controller detached it;
`DeleteVolume` is retried while the disk is attached). pulumi-kubernetes' delete of a Namespace waits for the
namespace (and so for its claims) to be gone, not for their volumes. The destroy then deletes the EBS CSI add-on,
the node group and the cluster (EKS), or the node pool and the cluster (GKE), within seconds: a disk whose deletion
had not yet run stayed in the account, billed, with nothing left to delete it (REVIEW9 R4).

`volumes_released` declares a `command.local.Command` that does nothing on create and, on delete, waits until no
volume of the stack's storage class is left whose claim is gone. Every in-cluster object waits for it on create
(ClusterTarget.depends_on), and it waits for the storage class, the driver and the nodes: Pulumi deletes in reverse
dependency order, so its delete runs after every namespace and claim of the stack is gone and before the driver.
A volume whose claim still exists (a claim a kept namespace retains on purpose) is not waited for. The wait is
bounded: past it the destroy fails with the volumes named, and the driver, nodes and cluster stay for a retry.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import pulumi
import pulumi_command as command

RELEASE_TIMEOUT_SECONDS = 600
"""How long a destroy waits for the released volumes (a detach takes up to 6 minutes when a node is gone)."""
POLL_SECONDS = 10
KUBECONFIG_ENV = "RAG_DESTROY_KUBECONFIG"


def release_wait_script(
    storage_class: str, timeout_seconds: int = RELEASE_TIMEOUT_SECONDS, poll_seconds: int = POLL_SECONDS
) -> str:
    """The delete step: poll (kubectl, with the stack's kubeconfig from `$RAG_DESTROY_KUBECONFIG`) until no
    PersistentVolume of `storage_class` with reclaim policy `Delete` is left whose claim (`spec.claimRef`) no longer
    exists. A `Retain` volume is the driver's to keep, not to delete: waiting for it would fail every destroy of the stack after the wait."""
    wanted = shlex.quote(storage_class)
    pv_query = shlex.quote(
        "{range .items[*]}{.spec.storageClassName} {.spec.persistentVolumeReclaimPolicy}"
        ' {.spec.claimRef.namespace}/{.spec.claimRef.name} {.metadata.name}{"\\n"}{end}'
    )
    pvc_query = shlex.quote('{range .items[*]}{.metadata.namespace}/{.metadata.name}{"\\n"}{end}')
    return f"""set -eu
command -v kubectl >/dev/null || {{ echo "kubectl not found: a destroy waits with it for the disks of the deleted claims" >&2; exit 1; }}
config=$(mktemp)
trap 'rm -f "$config"' EXIT
printf '%s' "${KUBECONFIG_ENV}" > "$config"
export KUBECONFIG="$config"
deadline=$(( $(date +%s) + {int(timeout_seconds)} ))
while :; do
  if claims=$(kubectl get pvc --all-namespaces -o jsonpath={pvc_query}) \\
    && volumes=$(kubectl get pv -o jsonpath={pv_query}); then
    left=$(printf '%s\\n' "$volumes" | while read -r class policy claim volume; do
      # Only the driver's deletes are waited for: a Retain volume (patched so, or a class that retains) never goes.
      [ "$class" = {wanted} ] && [ "$policy" = Delete ] || continue
      printf '%s\\n' "$claims" | grep -qxF -- "$claim" || printf '%s ' "$volume"
    done)
    [ -z "$left" ] && exit 0
  else
    left="(kubectl failed: see its error above)"  # a transient API error is retried until the deadline
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "volumes of deleted claims still not deleted by the storage driver after {int(timeout_seconds)} s: $left" >&2
    echo "(the driver, nodes and cluster are kept: run the destroy again, or delete the disks by hand)" >&2
    case "$left" in "(kubectl failed"*)
      echo "(a cluster that no longer answers: check what is left in the cloud console, then run pulumi state delete on this volumes-released resource and run the destroy again)" >&2 ;;
    esac
    exit 1
  fi
  sleep {int(poll_seconds)}
done
"""


def volumes_released(
    name: str,
    storage_class: str,
    kubeconfig: pulumi.Input[str],
    depends_on: Sequence[pulumi.Resource],
) -> command.local.Command:
    """The resource every in-cluster object waits for, whose delete waits for the released volumes."""
    return command.local.Command(
        name,
        create="true",
        delete=release_wait_script(storage_class),
        environment={KUBECONFIG_ENV: kubeconfig},
        opts=pulumi.ResourceOptions(depends_on=list(depends_on)),
    )
