"""Pure planners: decisions as functions of the typed config, turned into resources by infra/components/."""
