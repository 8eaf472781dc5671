"""Tensile's CrossGuard policy pack: rules by domain (compute, cost, storage, kubernetes,
security, tagging) over a small framework, and a runner that drives the pack over gRPC."""
