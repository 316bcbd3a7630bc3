"""Interpretability: named activation capture, attention heads, MLP neurons.

- `hooks`: capture activations at the model's hook sites over many unpadded stories.
- `heads`: per-head induction / distance / semantic scores, classification with controls, attention maps.
- `neurons`: top-activating tokens per neuron, labels, scores against random directions.
- `text`: stories aligned with their words, sentences and word classes.
- `summary`: the typed summaries of heads.json and neurons_layer*.json, as the report reads them.
"""
