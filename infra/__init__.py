"""Tensile infra core: the Pulumi program (run by `pulumi up` from infra/__main__.py), its planners and cost model."""
