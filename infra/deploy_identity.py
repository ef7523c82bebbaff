"""What the identity that runs `pulumi up` (and the nightly drift identity) must be allowed to do, per cloud.

A first `pulumi up` in a fresh project or account fails with one 403 after another, each after minutes of work, when
the CI identity lacks a permission nobody listed. This module is the list, kept as code next to the program: each
resource type the program creates maps to the roles (GCP) or IAM actions (AWS) its create, read, update and delete
need, plus what no single resource shows (`iam.serviceAccounts.actAs` on the node service account, `iam:PassRole`,
the service-linked roles a fresh AWS account creates on first use). tests/infra/test_deploy_identity.py renders
every stack on both clouds and fails when a resource type is not covered here, and checks docs/delivery.md lists
the same roles.

`python -m infra.deploy_identity gcp` prints the gcloud commands that grant the deploy roles;
`python -m infra.deploy_identity aws` prints the IAM policy document (JSON) for the deploy role.

Sources: the GCP predefined roles reference (cloud.google.com/iam/docs/roles-permissions), GKE "Configure node
service accounts" (creating nodes that run as a service account needs `iam.serviceAccounts.actAs` on it), the
Service Usage access control page (`roles/serviceusage.serviceUsageAdmin`), the AWS service authorization
reference, EKS "Cluster IAM role" / "Amazon EKS node IAM role" (PassRole) and "Using service-linked roles" of EKS,
RDS, ElastiCache and Elastic Load Balancing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable

#: Types that need no cloud permission of their own: providers, local random values, and Kubernetes objects (the
#: cluster access below covers them).
NO_CLOUD_PERMISSION = ("pulumi:providers:", "random:", "tls:", "kubernetes:", "pulumi:pulumi:Stack")

# --------------------------------------------------------------------------------------------------------- GCP
#: Roles per resource type of the GKE target (all granted on the stack's project).
GCP_DEPLOY_ROLES: dict[str, tuple[str, ...]] = {
    "gcp:projects/service:Service": ("roles/serviceusage.serviceUsageAdmin",),
    "gcp:compute/network:Network": ("roles/compute.networkAdmin",),
    "gcp:compute/subnetwork:Subnetwork": ("roles/compute.networkAdmin",),
    "gcp:compute/globalAddress:GlobalAddress": ("roles/compute.networkAdmin",),
    "gcp:compute/router:Router": ("roles/compute.networkAdmin",),
    "gcp:compute/routerNat:RouterNat": ("roles/compute.networkAdmin",),
    "gcp:compute/firewall:Firewall": ("roles/compute.securityAdmin",),
    "gcp:servicenetworking/connection:Connection": (
        "roles/servicenetworking.networksAdmin",
        "roles/compute.networkAdmin",
    ),
    # container.admin, not container.clusterAdmin: the charts create ClusterRoles and bindings through the
    # Kubernetes API, which GKE's RBAC grants container.admin (container.developer cannot).
    "gcp:container/cluster:Cluster": ("roles/container.admin",),
    "gcp:container/nodePool:NodePool": ("roles/container.admin",),
    "gcp:serviceaccount/account:Account": ("roles/iam.serviceAccountAdmin",),
    "gcp:serviceaccount/iAMMember:IAMMember": ("roles/iam.serviceAccountAdmin",),
    "gcp:projects/iAMMember:IAMMember": ("roles/resourcemanager.projectIamAdmin",),
    # Creates the repository and pushes the built image (admin includes writer).
    "gcp:artifactregistry/repository:Repository": ("roles/artifactregistry.admin",),
    "docker-build:index:Image": ("roles/artifactregistry.writer",),
    # The promotion copy (infra/components/image.py, skopeo on the runner) pushes into the stack's repository; a
    # build's protection step also removes the `live-` tag of a release two builds back (tags.delete: repoAdmin).
    "command:local:Command": ("roles/artifactregistry.writer", "roles/artifactregistry.repoAdmin"),
    "gcp:sql/databaseInstance:DatabaseInstance": ("roles/cloudsql.admin",),
    "gcp:sql/database:Database": ("roles/cloudsql.admin",),
    "gcp:sql/user:User": ("roles/cloudsql.admin",),
    "gcp:redis/instance:Instance": ("roles/redis.admin",),
    "gcp:storage/bucket:Bucket": ("roles/storage.admin",),
    "gcp:storage/bucketIAMMember:BucketIAMMember": ("roles/storage.admin",),
}
#: What no single resource shows.
GCP_DEPLOY_EXTRA: dict[str, str] = {
    "roles/iam.serviceAccountUser": "iam.serviceAccounts.actAs on the node service account: GKE refuses a node pool "
    "(or Autopilot defaults) running as an account the caller cannot act as",
    "roles/storage.objectAdmin": "on the state bucket only (PULUMI_BACKEND_URL gs://...): state and its lock files",
    "roles/artifactregistry.reader": "on the promotion source's repository (dev's project), which the promotion "
    "copy reads",
}
#: The nightly drift identity: `pulumi refresh` reads every resource, their IAM policies, and the stack's
#: Kubernetes Secrets (GKE has no read-only role that includes Secrets: container.viewer omits them).
GCP_DRIFT_ROLES: dict[str, str] = {
    "roles/viewer": "reads every Google resource of the stack",
    "roles/iam.securityReviewer": "reads the IAM policies of the project, the service accounts and the bucket",
    "roles/container.developer": "reads the stack's Secrets and Helm release Secrets (it can also write: no "
    "predefined GKE role reads Secrets only)",
    "roles/storage.objectAdmin": "on the state bucket only: refresh takes the stack's lock",
}

# --------------------------------------------------------------------------------------------------------- AWS
#: IAM actions per resource type of the EKS target (create, read, update, delete, tags).
#: What pushing an image into an ECR repository takes (the build's push and the promotion copy's).
ECR_PUSH = (
    "ecr:GetAuthorizationToken",
    "ecr:BatchCheckLayerAvailability",
    "ecr:BatchGetImage",
    "ecr:GetDownloadUrlForLayer",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:PutImage",
)

AWS_DEPLOY_ACTIONS: dict[str, tuple[str, ...]] = {
    "aws:ec2/vpc:Vpc": (
        "ec2:CreateVpc",
        "ec2:DeleteVpc",
        "ec2:ModifyVpcAttribute",
        "ec2:DescribeVpcs",
        "ec2:DescribeVpcAttribute",
    ),
    "aws:ec2/subnet:Subnet": (
        "ec2:CreateSubnet",
        "ec2:DeleteSubnet",
        "ec2:ModifySubnetAttribute",
        "ec2:DescribeSubnets",
        "ec2:DescribeAvailabilityZones",
    ),
    "aws:ec2/internetGateway:InternetGateway": (
        "ec2:CreateInternetGateway",
        "ec2:DeleteInternetGateway",
        "ec2:AttachInternetGateway",
        "ec2:DetachInternetGateway",
        "ec2:DescribeInternetGateways",
    ),
    "aws:ec2/eip:Eip": ("ec2:AllocateAddress", "ec2:ReleaseAddress", "ec2:DescribeAddresses"),
    "aws:ec2/natGateway:NatGateway": (
        "ec2:CreateNatGateway",
        "ec2:DeleteNatGateway",
        "ec2:DescribeNatGateways",
    ),
    "aws:ec2/routeTable:RouteTable": (
        "ec2:CreateRouteTable",
        "ec2:DeleteRouteTable",
        "ec2:CreateRoute",
        "ec2:DeleteRoute",
        "ec2:ReplaceRoute",
        "ec2:DescribeRouteTables",
    ),
    "aws:ec2/routeTableAssociation:RouteTableAssociation": (
        "ec2:AssociateRouteTable",
        "ec2:DisassociateRouteTable",
        "ec2:DescribeRouteTables",
    ),
    "aws:ec2/securityGroup:SecurityGroup": (
        "ec2:CreateSecurityGroup",
        "ec2:DeleteSecurityGroup",
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:AuthorizeSecurityGroupEgress",
        "ec2:RevokeSecurityGroupIngress",
        "ec2:RevokeSecurityGroupEgress",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeSecurityGroupRules",
        "ec2:DescribeNetworkInterfaces",
    ),
    "aws:ec2/vpcEndpoint:VpcEndpoint": (
        "ec2:CreateVpcEndpoint",
        "ec2:DeleteVpcEndpoints",
        "ec2:ModifyVpcEndpoint",
        "ec2:DescribeVpcEndpoints",
        "ec2:DescribePrefixLists",
    ),
    "aws:ecr/repository:Repository": (
        "ecr:CreateRepository",
        "ecr:DeleteRepository",
        "ecr:DescribeRepositories",
        "ecr:PutImageTagMutability",
        "ecr:PutImageScanningConfiguration",
        "ecr:ListTagsForResource",
        "ecr:TagResource",
    ),
    "aws:ecr/lifecyclePolicy:LifecyclePolicy": (
        "ecr:PutLifecyclePolicy",
        "ecr:GetLifecyclePolicy",
        "ecr:DeleteLifecyclePolicy",
    ),
    # The build pushes the image and its cache (and reads the registry on refresh).
    "docker-build:index:Image": (*ECR_PUSH, "ecr:DescribeImages"),
    # The promotion copy pushes the promoted image into the stack's repository (reading the source the same way
    # when it is an ECR repository of this account; another account's needs a repository policy there), and the
    # one-time registry-protect-existing step lists the repository's tags (the registry API's tags/list is
    # ecr:ListImages: without it skopeo gets 403; containers/skopeo#738). A build's protection step removes the
    # `live-` tag of a release two builds back by tag (ecr:BatchDeleteImage; the image keeps its `build-` tag).
    "command:local:Command": (*ECR_PUSH, "ecr:ListImages", "ecr:BatchDeleteImage"),
    # The EKS control-plane log group (/aws/eks/<cluster>/cluster) and its retention.
    "aws:cloudwatch/logGroup:LogGroup": (
        "logs:CreateLogGroup",
        "logs:DeleteLogGroup",
        "logs:DescribeLogGroups",
        "logs:PutRetentionPolicy",
        "logs:DeleteRetentionPolicy",
        "logs:ListTagsForResource",
        "logs:TagResource",
        "logs:UntagResource",
    ),
    "aws:eks/cluster:Cluster": (
        "eks:CreateCluster",
        "eks:DeleteCluster",
        "eks:DescribeCluster",
        "eks:UpdateClusterConfig",
        "eks:UpdateClusterVersion",
        "eks:TagResource",
        "eks:UntagResource",
    ),
    # rag:cluster.eks.adminPrincipals / readerPrincipals.
    "aws:eks/accessEntry:AccessEntry": (
        "eks:CreateAccessEntry",
        "eks:DeleteAccessEntry",
        "eks:DescribeAccessEntry",
    ),
    "aws:eks/accessPolicyAssociation:AccessPolicyAssociation": (
        "eks:AssociateAccessPolicy",
        "eks:DisassociateAccessPolicy",
        "eks:ListAssociatedAccessPolicies",
    ),
    "aws:eks/nodeGroup:NodeGroup": (
        "eks:CreateNodegroup",
        "eks:DeleteNodegroup",
        "eks:DescribeNodegroup",
        "eks:UpdateNodegroupConfig",
        "eks:UpdateNodegroupVersion",
    ),
    "aws:eks/addon:Addon": (
        "eks:CreateAddon",
        "eks:DeleteAddon",
        "eks:DescribeAddon",
        "eks:UpdateAddon",
        "eks:DescribeAddonVersions",
    ),
    "aws:iam/role:Role": (
        "iam:CreateRole",
        "iam:DeleteRole",
        "iam:GetRole",
        "iam:UpdateAssumeRolePolicy",
        "iam:TagRole",
        "iam:ListRolePolicies",
        "iam:ListAttachedRolePolicies",
        "iam:ListInstanceProfilesForRole",
    ),
    "aws:iam/rolePolicy:RolePolicy": ("iam:PutRolePolicy", "iam:GetRolePolicy", "iam:DeleteRolePolicy"),
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": ("iam:AttachRolePolicy", "iam:DetachRolePolicy"),
    "aws:iam/openIdConnectProvider:OpenIdConnectProvider": (
        "iam:CreateOpenIDConnectProvider",
        "iam:DeleteOpenIDConnectProvider",
        "iam:GetOpenIDConnectProvider",
        "iam:TagOpenIDConnectProvider",
    ),
    "aws:rds/instance:Instance": (
        "rds:CreateDBInstance",
        "rds:DeleteDBInstance",
        "rds:ModifyDBInstance",
        "rds:DescribeDBInstances",
        "rds:CreateDBSnapshot",
        "rds:AddTagsToResource",
        "rds:ListTagsForResource",
        # rag:postgres.managed.restore: the instance is created from a snapshot or a point in time.
        "rds:RestoreDBInstanceFromDBSnapshot",
        "rds:RestoreDBInstanceToPointInTime",
        "rds:DescribeDBSnapshots",
    ),
    # One parameter group per Postgres major (a declared major upgrade moves the instance to the next one).
    "aws:rds/parameterGroup:ParameterGroup": (
        "rds:CreateDBParameterGroup",
        "rds:DeleteDBParameterGroup",
        "rds:ModifyDBParameterGroup",
        "rds:ResetDBParameterGroup",
        "rds:DescribeDBParameterGroups",
        "rds:DescribeDBParameters",
        "rds:AddTagsToResource",
        "rds:ListTagsForResource",
    ),
    "aws:rds/subnetGroup:SubnetGroup": (
        "rds:CreateDBSubnetGroup",
        "rds:DeleteDBSubnetGroup",
        "rds:ModifyDBSubnetGroup",
        "rds:DescribeDBSubnetGroups",
    ),
    "aws:elasticache/replicationGroup:ReplicationGroup": (
        "elasticache:CreateReplicationGroup",
        "elasticache:DeleteReplicationGroup",
        "elasticache:ModifyReplicationGroup",
        "elasticache:DescribeReplicationGroups",
        "elasticache:DescribeCacheClusters",
        "elasticache:AddTagsToResource",
        "elasticache:ListTagsForResource",
    ),
    "aws:elasticache/subnetGroup:SubnetGroup": (
        "elasticache:CreateCacheSubnetGroup",
        "elasticache:DeleteCacheSubnetGroup",
        "elasticache:ModifyCacheSubnetGroup",
        "elasticache:DescribeCacheSubnetGroups",
    ),
    # The provider's read of a bucket asks for every sub-configuration (GetBucket*), and force_destroy empties it.
    "aws:s3/bucket:Bucket": (
        "s3:CreateBucket",
        "s3:DeleteBucket",
        "s3:ListBucket",
        "s3:ListBucketVersions",
        "s3:GetBucket*",
        "s3:GetAccelerateConfiguration",
        "s3:GetLifecycleConfiguration",
        "s3:GetReplicationConfiguration",
        "s3:GetEncryptionConfiguration",
        "s3:PutBucketTagging",
        "s3:DeleteObject",
        "s3:DeleteObjectVersion",
    ),
    "aws:s3/bucketVersioning:BucketVersioning": ("s3:PutBucketVersioning", "s3:GetBucketVersioning"),
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": (
        "s3:PutEncryptionConfiguration",
        "s3:GetEncryptionConfiguration",
    ),
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": (
        "s3:PutBucketPublicAccessBlock",
        "s3:GetBucketPublicAccessBlock",
    ),
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": (
        "s3:PutLifecycleConfiguration",
        "s3:GetLifecycleConfiguration",
    ),
}
#: What no single resource shows.
AWS_DEPLOY_EXTRA: dict[str, tuple[str, ...]] = {
    # EKS takes the cluster and node roles (CreateCluster/CreateNodegroup roleArn/nodeRole), the EBS CSI add-on its
    # IRSA role: the caller must be allowed to pass them.
    "pass the cluster, node and add-on roles to EKS": ("iam:PassRole",),
    # A fresh account has none of AWSServiceRoleForAmazonEKS, ...ForAmazonEKSNodegroup, ...ForElastiCache and
    # ...ForRDS: the first cluster, node group, replication group and DB instance each create theirs with the
    # caller's permissions, and fail without this one. (The gateway's NLB is created by the cluster, whose role
    # AmazonEKSClusterPolicy may create the Elastic Load Balancing one.)
    "service-linked roles created on first use": ("iam:CreateServiceLinkedRole",),
    # Availability zones, the account ID (STS needs no permission) and describe calls the provider makes.
    "reads the provider makes": ("ec2:DescribeAvailabilityZones", "ec2:DescribeAccountAttributes"),
    # The version the cluster and its node groups run, read before every preview and update so a version EKS
    # would refuse fails there (infra/clusters/eks.py running_version; Describe* are on the resources above).
    "the running EKS version": ("eks:ListClusters", "eks:ListNodegroups"),
    "the state bucket (PULUMI_BACKEND_URL s3://...)": ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"),
}
#: AWS service principals whose service-linked roles the stack's resources create on first use.
AWS_SERVICE_LINKED = (
    "eks.amazonaws.com",
    "eks-nodegroup.amazonaws.com",
    "elasticache.amazonaws.com",
    "rds.amazonaws.com",
)
#: The nightly drift identity on AWS.
AWS_DRIFT: dict[str, str] = {
    "ReadOnlyAccess": "the AWS managed policy: Describe/Get/List of every resource the stack holds",
    "AmazonEKSAdminViewPolicy": "an EKS access policy: list the drift role in rag:cluster.eks.readerPrincipals; "
    "refresh reads the stack's Secrets and Helm release Secrets (AmazonEKSViewPolicy omits Secrets)",
    "state bucket read/write": "s3:GetObject/PutObject/DeleteObject on the state bucket: refresh takes the lock",
}


# ------------------------------------------------------------------------------------------------------ helpers
def needs_no_permission(type_: str) -> bool:
    """Types the cloud never sees (providers, local values, Kubernetes objects behind the cluster access)."""
    return type_.startswith(NO_CLOUD_PERMISSION)


def uncovered(types: Iterable[str], cloud: str) -> list[str]:
    """The resource types of `types` the deploy identity's list for `cloud` ("gcp"/"aws") does not cover."""
    table = GCP_DEPLOY_ROLES if cloud == "gcp" else AWS_DEPLOY_ACTIONS
    return sorted({t for t in types if not needs_no_permission(t) and t not in table})


def gcp_deploy_roles() -> list[str]:
    """Every role the GKE deploy identity needs (project roles; the two extras are scoped as their text says)."""
    roles = {role for roles in GCP_DEPLOY_ROLES.values() for role in roles}
    return sorted(roles | set(GCP_DEPLOY_EXTRA))


def aws_deploy_policy() -> dict:
    """The IAM policy document of the EKS deploy role."""
    actions = {action for actions in AWS_DEPLOY_ACTIONS.values() for action in actions}
    for extra in AWS_DEPLOY_EXTRA.values():
        actions.update(extra)
    actions -= {"iam:CreateServiceLinkedRole"}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "DeployRag", "Effect": "Allow", "Action": sorted(actions), "Resource": "*"},
            {
                "Sid": "ServiceLinkedRolesOnFirstUse",
                "Effect": "Allow",
                "Action": "iam:CreateServiceLinkedRole",
                "Resource": "*",
                "Condition": {"StringEquals": {"iam:AWSServiceName": list(AWS_SERVICE_LINKED)}},
            },
        ],
    }


def gcloud_commands(project: str = "PROJECT", member: str = "serviceAccount:DEPLOYER") -> list[str]:
    """`gcloud projects add-iam-policy-binding` for each project-level deploy role."""
    project_roles = sorted({role for roles in GCP_DEPLOY_ROLES.values() for role in roles})
    return [
        f"gcloud projects add-iam-policy-binding {project} --member={member} --role={role} --condition=None"
        for role in project_roles
    ]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["aws"]:
        print(json.dumps(aws_deploy_policy(), indent=2))
        return 0
    if args[:1] == ["gcp"]:
        print("\n".join(gcloud_commands(*args[1:3])))
        for role, why in GCP_DEPLOY_EXTRA.items():
            print(f"# also {role}: {why}")
        return 0
    print("usage: python -m infra.deploy_identity aws | gcp [PROJECT MEMBER]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
