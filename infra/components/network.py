"""The VPC: public and private subnets per AZ (tagged for EKS, load balancers and Karpenter
discovery), NAT per AZ or one, an S3 gateway endpoint, and interface endpoints when configured."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.config.types import NetworkConfig, nat_gateway_count
from infra.plan import network as network_plan
from infra.plan.pools import DISCOVERY_TAG


@dataclass(frozen=True, kw_only=True)
class NetworkArgs:
    config: NetworkConfig
    region: str
    cluster_name: str


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    private_subnet_ids: list[pulumi.Output[str]]
    public_subnet_ids: list[pulumi.Output[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tensile:infra:Network", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)
        plan = network_plan.plan_subnets(cfg.cidr, cfg.availability_zones, cfg.nat_gateways)
        cluster_tag = {f"kubernetes.io/cluster/{args.cluster_name}": "shared"}

        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=cfg.cidr, enable_dns_hostnames=True, enable_dns_support=True,
                          tags={"Name": f"{name}-vpc"}, opts=child)
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags={"Name": f"{name}-igw"}, opts=child)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt", vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags={"Name": f"{name}-public"}, opts=child)

        public_subnets, private_subnets, private_route_tables, nats = [], [], [], []
        for subnet in plan:
            az = subnet.availability_zone
            public = aws.ec2.Subnet(
                f"{name}-public-{az}", vpc_id=vpc.id, cidr_block=subnet.public_cidr, availability_zone=az,
                map_public_ip_on_launch=False,
                tags={"Name": f"{name}-public-{az}", "kubernetes.io/role/elb": "1", **cluster_tag}, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-public-{az}-rta", subnet_id=public.id,
                                          route_table_id=public_rt.id, opts=child)
            public_subnets.append(public)
        for i in range(nat_gateway_count(cfg.availability_zones, cfg.nat_gateways)):
            az = plan[i].availability_zone
            eip = aws.ec2.Eip(f"{name}-nat-{az}-eip", domain="vpc", tags={"Name": f"{name}-nat-{az}"}, opts=child)
            nats.append(aws.ec2.NatGateway(f"{name}-nat-{az}", allocation_id=eip.id, subnet_id=public_subnets[i].id,
                                           tags={"Name": f"{name}-nat-{az}"},
                                           opts=pulumi.ResourceOptions(parent=self, depends_on=[igw])))
        for subnet in plan:
            az = subnet.availability_zone
            private = aws.ec2.Subnet(
                f"{name}-private-{az}", vpc_id=vpc.id, cidr_block=subnet.private_cidr, availability_zone=az,
                tags={"Name": f"{name}-private-{az}", "kubernetes.io/role/internal-elb": "1",
                      DISCOVERY_TAG: args.cluster_name, **cluster_tag}, opts=child)
            rt = aws.ec2.RouteTable(
                f"{name}-private-{az}-rt", vpc_id=vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nats[subnet.nat_index].id)],
                tags={"Name": f"{name}-private-{az}"}, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-private-{az}-rta", subnet_id=private.id, route_table_id=rt.id,
                                          opts=child)
            private_subnets.append(private)
            private_route_tables.append(rt)

        # Checkpoint traffic to S3 must not pay NAT data processing.
        aws.ec2.VpcEndpoint(
            f"{name}-s3", vpc_id=vpc.id, service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway", route_table_ids=[rt.id for rt in private_route_tables],
            tags={"Name": f"{name}-s3"}, opts=child)
        if cfg.interface_endpoints:
            endpoint_sg = aws.ec2.SecurityGroup(
                f"{name}-endpoints-sg", vpc_id=vpc.id, description="HTTPS from the VPC to interface endpoints",
                ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=443, to_port=443,
                                                          cidr_blocks=[cfg.cidr])],
                tags={"Name": f"{name}-endpoints"}, opts=child)
            for service in network_plan.interface_endpoint_services(args.region):
                short = service.rsplit(".", 2)[-2:] if service.endswith((".api", ".dkr")) else [service.rsplit(".", 1)[-1]]
                aws.ec2.VpcEndpoint(
                    f"{name}-{'-'.join(short)}", vpc_id=vpc.id, service_name=service, vpc_endpoint_type="Interface",
                    private_dns_enabled=True, subnet_ids=[s.id for s in private_subnets],
                    security_group_ids=[endpoint_sg.id], tags={"Name": f"{name}-{'-'.join(short)}"}, opts=child)

        self.vpc_id = vpc.id
        self.private_subnet_ids = [s.id for s in private_subnets]
        self.public_subnet_ids = [s.id for s in public_subnets]
        self.register_outputs({"vpcId": self.vpc_id, "privateSubnetIds": self.private_subnet_ids,
                               "publicSubnetIds": self.public_subnet_ids})
