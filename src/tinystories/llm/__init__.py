"""LLM clients behind one async interface (`base.LLM`): OpenAI-compatible servers and in-process models."""
