"""Example model factories for `model.factory` (docs/design/models.md): bring-your-own-model recipes."""
