"""ComponentResources, one per concern: each turns a plan (infra/plan/) into resources."""
