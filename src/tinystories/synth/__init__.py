"""Dataset generation: the child lexicon, story prompts, and the offline procedural story engine."""
