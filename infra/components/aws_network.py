"""Private network access of the AWS managed data stores (RDS PostgreSQL, ElastiCache).

Both stores sit in private subnets (their own subnet group) behind a security group that admits one TCP port
from the Kubernetes cluster's CIDRs and nothing else. `private_access` creates that pair; each component keeps
its own resource names (`<name>-subnets`, `<name>-sg`) and descriptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import pulumi
import pulumi_aws as aws


class PrivateAccess(NamedTuple):
    """What the store itself references: its subnet group's name and the security group's id."""

    subnet_group_name: pulumi.Output[str]
    security_group_id: pulumi.Output[str]


class PrivateNetworkArgs(Protocol):
    """The fields PostgresDatabaseArgs (rds mode) and RedisCacheArgs (elasticache mode) share."""

    @property
    def vpc_id(self) -> pulumi.Input[str] | None: ...
    @property
    def subnet_ids(self) -> Sequence[pulumi.Input[str]]: ...
    @property
    def allowed_cidrs(self) -> Sequence[str]: ...


def private_access(
    name: str,
    subnet_group: type[aws.rds.SubnetGroup] | type[aws.elasticache.SubnetGroup],
    args: PrivateNetworkArgs,
    *,
    port: int,
    subnets_description: str,
    sg_description: str,
    rule_description: str,
    opts: pulumi.ResourceOptions,
) -> PrivateAccess:
    """Create `<name>-subnets` (of the store's own SubnetGroup type) and `<name>-sg` admitting TCP `port`."""
    subnets = subnet_group(
        f"{name}-subnets",
        description=subnets_description,
        subnet_ids=list(args.subnet_ids),
        opts=opts,
    )
    security_group = aws.ec2.SecurityGroup(
        f"{name}-sg",
        description=sg_description,
        vpc_id=args.vpc_id,
        ingress=[
            {
                "protocol": "tcp",
                "from_port": port,
                "to_port": port,
                "cidr_blocks": list(args.allowed_cidrs),
                "description": rule_description,
            }
        ],
        opts=opts,
    )
    return PrivateAccess(subnets.name, security_group.id)
