"""The recipes, readable scripts that run as `python recipes/sft.py` in a checkout. Installed, this folder is the
package `hftrain.recipes` (its configs/ included), which `hftrain sft|dpo|...` runs (`hftrain.recipes_cli`)."""
