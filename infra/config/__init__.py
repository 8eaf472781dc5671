"""The stack config: typed, parsed from a stack file or the running stack, checked before any resource."""
