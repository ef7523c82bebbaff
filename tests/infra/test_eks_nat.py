"""EKS egress (`rag:cluster.eks.natGateways`): which NAT gateway each private subnet's internet traffic leaves by.

Followed through the recorded inputs the way AWS routes a packet: a private subnet -> the route table associated
with it -> that table's 0.0.0.0/0 route -> the NAT gateway -> the public subnet it sits in -> that subnet's table
routing to the internet gateway. With `perZone` each zone must leave by a NAT of its own zone (losing a zone then
loses only that zone's egress); with `single` every zone shares one.
"""

from __future__ import annotations

from collections import Counter

import pulumi
import pytest

from infra.clusters.eks import nat_alias_suffixes, nat_suffix, require_zones, zone_opts
from infra.config import ConfigError
from infra.offline import RecordedResource, StackRun
from infra.render import quota_usage, summarize
from tests.infra.conftest import run

SUBNET = "aws:ec2/subnet:Subnet"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
ASSOCIATION = "aws:ec2/routeTableAssociation:RouteTableAssociation"
NAT = "aws:ec2/natGateway:NatGateway"
EIP = "aws:ec2/eip:Eip"
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"


def _by_id(result: StackRun, type_: str) -> dict[str, RecordedResource]:
    """Resources of one type by the id the mocks give them (`<name>-id`); ids are only unique per type."""
    return {f"{r.name}-id": r for r in result.of_type(type_)}


def egress(result: StackRun) -> dict[str, tuple[str, RecordedResource]]:
    """Private subnet name -> (its zone, the NAT gateway its 0.0.0.0/0 route leads to), checking every hop."""
    subnets, tables, nats = (_by_id(result, t) for t in (SUBNET, ROUTE_TABLE, NAT))
    associations = Counter(a.inputs["subnetId"] for a in result.of_type(ASSOCIATION))
    assert all(count == 1 for count in associations.values())  # a subnet has one route table
    igw = result.of_type("aws:ec2/internetGateway:InternetGateway")[0]
    table_of = {a.inputs["subnetId"]: tables[a.inputs["routeTableId"]] for a in result.of_type(ASSOCIATION)}
    found: dict[str, tuple[str, RecordedResource]] = {}
    for subnet_id, subnet in subnets.items():
        if not subnet.name.startswith("private-"):
            continue
        defaults = [r for r in table_of[subnet_id].inputs["routes"] if r["cidrBlock"] == "0.0.0.0/0"]
        assert len(defaults) == 1
        assert "gatewayId" not in defaults[0]
        nat = nats[defaults[0]["natGatewayId"]]
        public = subnets[nat.inputs["subnetId"]]
        assert public.inputs.get("mapPublicIpOnLaunch") is True
        public_routes = table_of[nat.inputs["subnetId"]].inputs["routes"]
        assert {"cidrBlock": "0.0.0.0/0", "gatewayId": f"{igw.name}-id"} in public_routes
        found[subnet.name] = (subnet.inputs["availabilityZone"], nat)
    return found


def _zone_of_nat(result: StackRun, nat: RecordedResource) -> str:
    return _by_id(result, SUBNET)[nat.inputs["subnetId"]].inputs["availabilityZone"]


def test_prod_routes_each_zone_through_a_nat_gateway_of_its_own_zone() -> None:
    result = run("prod")
    routes = egress(result)
    assert len(routes) == 3
    for zone, nat in routes.values():
        assert _zone_of_nat(result, nat) == zone
    assert len({nat.urn for _zone, nat in routes.values()}) == 3
    nats = result.of_type(NAT)
    assert len(nats) == 3
    # Each NAT has an address of its own (one EIP can back one NAT gateway).
    assert len({nat.inputs["allocationId"] for nat in nats}) == 3
    assert len(result.of_type(EIP)) == 3


def test_single_shares_one_nat_gateway_between_all_zones() -> None:
    result = run("staging", "eks")  # staging's eks block: natGateways single
    routes = egress(result)
    assert len(routes) == 3
    assert {nat.name for _zone, nat in routes.values()} == {"nat"}
    assert len(result.of_type(NAT)) == 1
    assert [r.name for r in result.of_type(ROUTE_TABLE) if r.name.startswith("private")] == ["private-rt"]
    # The names the single NAT shipped with are kept, so existing stacks see no replacement.
    assert {r.name for r in result.of_type(EIP)} == {"nat-ip"}


def test_per_zone_follows_the_number_of_zones() -> None:
    result = run("dev", "eks", cluster={"provider": "eks", "eks": {"availabilityZones": 2}})
    routes = egress(result)
    assert len(routes) == 2
    assert len(result.of_type(NAT)) == 2
    for zone, nat in routes.values():
        assert _zone_of_nat(result, nat) == zone


@pytest.mark.parametrize(("stack", "target"), [("prod", None), ("staging", "eks")])
def test_the_s3_gateway_endpoint_is_on_every_private_route_table(stack: str, target: str | None) -> None:
    result = run(stack, target)
    private = {f"{t.name}-id" for t in result.of_type(ROUTE_TABLE) if t.name.startswith("private-rt")}
    endpoint = result.by_name("s3-endpoint").inputs
    assert endpoint["vpcEndpointType"] == "Gateway"
    assert set(endpoint["routeTableIds"]) == private
    assert len(endpoint["routeTableIds"]) == len(private)


def test_egress_resources_wait_for_what_they_need() -> None:
    result = run("prod")
    igw = result.of_type("aws:ec2/internetGateway:InternetGateway")[0].urn
    public_associations = {
        a.inputs["subnetId"]: a.urn for a in result.of_type(ASSOCIATION) if a.name.startswith("public-")
    }
    for eip in result.of_type(EIP):
        assert igw in eip.depends_on  # an EIP in a VPC needs its internet gateway (pulumi-aws Eip docstring)
    for nat in result.of_type(NAT):
        assert igw in nat.depends_on
        # The NAT's own way out: its public subnet's route to the internet gateway.
        assert public_associations[nat.inputs["subnetId"]] in nat.depends_on
    node_group = result.by_name("eks-nodes")
    private_associations = {a.urn for a in result.of_type(ASSOCIATION) if a.name.startswith("private-")}
    assert len(private_associations) == 3
    # Nodes pull their add-on images from ECR through the NAT as they boot: their routes exist first.
    assert private_associations <= set(node_group.depends_on)


def test_the_key_changes_what_is_deployed_and_defaults_to_per_zone() -> None:
    single = run("dev", "eks", cluster={"provider": "eks", "eks": {"natGateways": "single"}})
    assert len(single.of_type(NAT)) == 1
    # The declared default is perZone (availability first: a stack that wants one NAT says so).
    assert len(run("dev", "eks").of_type(NAT)) == 3


@pytest.mark.parametrize("role", ["nat", "nat-ip", "private-rt"])
def test_switching_layouts_adopts_zone_zero_instead_of_replacing_it(role: str) -> None:
    """`single` <-> `perZone` keeps zone 0's NAT and its public address: each layout's zone-0 name is an alias
    of the other's, and the zones beyond 0 (new in perZone) have none."""
    single_name, per_zone_name = role + nat_suffix("single", 0), role + nat_suffix("perZone", 0)
    assert (single_name, per_zone_name) == (role, f"{role}-0")
    assert [role + s for s in nat_alias_suffixes("perZone", 0)] == [single_name]
    assert [role + s for s in nat_alias_suffixes("single", 0)] == [per_zone_name]
    assert nat_alias_suffixes("perZone", 1) == []
    opts = zone_opts(pulumi.ResourceOptions(), role, "perZone", 0, [])
    assert [alias.name for alias in opts.aliases or []] == [single_name]


# Inputs whose change makes the provider replace the resource (terraform-provider-aws, the upstream of pulumi-aws
# 7.x: `ForceNew` in internal/service/ec2/vpc_eip.go, vpc_nat_gateway.go, vpc_route_table.go,
# vpc_route_table_association.go and vpc_endpoint.go). A RouteTableAssociation's `route_table_id` is not among
# them: its Update calls EC2 ReplaceRouteTableAssociation, which moves the subnet to the new table in one call,
# so the subnet is never without a route table.
FORCE_NEW = {
    EIP: {"address", "customerOwnedIpv4Pool", "domain", "ipamPoolId", "networkBorderGroup", "publicIpv4Pool"},
    NAT: {"allocationId", "availabilityMode", "connectivityType", "privateIp", "subnetId", "vpcId"},
    ROUTE_TABLE: {"vpcId"},
    ASSOCIATION: {"subnetId", "gatewayId"},
    ENDPOINT: {"serviceName", "vpcId", "vpcEndpointType", "serviceRegion"},
}


def _network(result: StackRun) -> dict[str, RecordedResource]:
    """The VPC's resources (everything of the aws:ec2 module) by URN."""
    return {r.urn: r for r in result.resources if r.type.startswith("aws:ec2/")}


def plan_switch(before: StackRun, after: StackRun) -> tuple[set[str], set[str], dict[str, set[str]]]:
    """What `pulumi up` does to the VPC when a stack deployed as `before` is run as `after`, the way the engine
    matches them: a resource of `after` takes over the state of its own URN or of one of its aliases. Returns
    (URNs created, URNs deleted, changed input keys per kept URN). The mocks' ids are `<name>-id`, so ids are
    mapped back to the state's names before inputs are compared (an aliased resource keeps its cloud id)."""
    old, new = _network(before), _network(after)
    state_urn = {urn: next((a for a in r.aliases if a in old), urn) for urn, r in new.items()}
    renamed = {new[urn].name: old[s].name for urn, s in state_urn.items() if s in old}

    def canonical(value: object) -> object:
        if isinstance(value, str) and value.endswith("-id") and value[:-3] in renamed:
            return f"{renamed[value[:-3]]}-id"
        if isinstance(value, list):
            return sorted((canonical(v) for v in value), key=repr)
        if isinstance(value, dict):
            return {k: canonical(v) for k, v in value.items() if k != "tags"}
        return value

    created = {urn for urn, s in state_urn.items() if s not in old}
    deleted = set(old) - set(state_urn.values())
    changed = {
        state_urn[urn]: {
            key
            for key in set(r.inputs) | set(old[state_urn[urn]].inputs)
            if key != "tags"
            and canonical(r.inputs.get(key)) != canonical(old[state_urn[urn]].inputs.get(key))
        }
        for urn, r in new.items()
        if urn not in created
    }
    return created, deleted, {urn: keys for urn, keys in changed.items() if keys}


SINGLE = {"cluster": {"provider": "eks", "eks": {"natGateways": "single"}}}
PER_ZONE = {"cluster": {"provider": "eks", "eks": {"natGateways": "perZone"}}}


@pytest.mark.parametrize(("before", "after"), [(SINGLE, PER_ZONE), (PER_ZONE, SINGLE)])
def test_switching_layouts_on_a_deployed_stack_replaces_and_deletes_nothing_it_keeps(
    before: dict[str, object], after: dict[str, object]
) -> None:
    """`natGateways` single <-> perZone, as the engine would apply it to the deployed VPC: zone 0's EIP, NAT
    gateway and route table are kept (their aliases match), no kept resource changes an input that forces a
    replacement, the private subnets' associations are updated in place, and only the other zones' egress is
    created (single -> perZone) or deleted (perZone -> single)."""
    old, new = run("dev", "eks", **before), run("dev", "eks", **after)
    created, deleted, changed = plan_switch(old, new)
    to_single = after is SINGLE
    extra = {f"{role}-{zone}" for role in ("nat-ip", "nat", "private-rt") for zone in (1, 2)}
    assert {urn.rsplit("::", 1)[1] for urn in (deleted if to_single else created)} == extra
    assert not (created if to_single else deleted)
    by_urn = {**_network(old), **_network(new)}
    for urn, keys in changed.items():
        kind = by_urn[urn].type
        assert not keys & FORCE_NEW.get(kind, set()), (urn, keys)
        # Only routing changes: the subnets' tables and the endpoint's list of them.
        assert (kind, keys) in [(ASSOCIATION, {"routeTableId"}), (ENDPOINT, {"routeTableIds"})]
    moved = {urn.rsplit("::", 1)[1] for urn, keys in changed.items() if by_urn[urn].type == ASSOCIATION}
    assert moved == {"private-1", "private-2"}  # zone 0's subnet stays on its (kept) table


@pytest.mark.parametrize(("stack", "target", "eips"), [("prod", None, 3), ("staging", "eks", 1)])
def test_the_plan_states_the_elastic_ips_the_stack_takes(stack: str, target: str | None, eips: int) -> None:
    """perZone takes an EIP per zone from the Region's quota (5 by default): `make plan` states the count, so a
    deployer can check it against what the account already holds before `pulumi up` hits AddressLimitExceeded."""
    result = run(stack, target)
    assert len(result.of_type(EIP)) == eips
    (line,) = [q for q in quota_usage(result) if q.startswith("Elastic IP addresses per Region")]
    assert f"in eu-west-1: this stack takes {eips} (default quota 5" in line
    assert "aws ec2 describe-addresses --region eu-west-1" in line
    assert line in summarize(result, stack)["quotas"]


def test_a_cluster_without_cloud_network_states_no_quota() -> None:
    assert quota_usage(run("dev")) == []


@pytest.mark.parametrize(("stack", "target"), [("prod", None), ("staging", "eks")])
def test_subnets_are_only_in_the_regions_availability_zones(stack: str, target: str | None) -> None:
    """A Local Zone the account opted into is listed by the zones data source unless filtered out (the offline
    mock answers so), and EKS cannot place its control plane or managed nodes there."""
    zones = {s.inputs["availabilityZone"] for s in run(stack, target).of_type(SUBNET)}
    assert zones == {"eu-west-1a", "eu-west-1b", "eu-west-1c"}


def test_a_region_with_fewer_zones_than_asked_is_refused_naming_the_key() -> None:
    assert require_zones(["eu-west-1a", "eu-west-1b"], 2, "eu-west-1") == ["eu-west-1a", "eu-west-1b"]
    with pytest.raises(
        ConfigError,
        match=r"rag:cluster\.eks\.availabilityZones in Pulumi\.\w+\.yaml: 4 zones asked, but eu-west-1 offers 3",
    ):
        require_zones(["eu-west-1a", "eu-west-1b", "eu-west-1c"], 4, "eu-west-1")
