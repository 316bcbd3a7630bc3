"""Prices per model, in US dollars per million input and output tokens, and cost arithmetic.

The table holds list prices of commonly used hosted models (standard tier, no
batch discount) and is only a default: `--price IN,OUT` overrides it for any
model, and a model absent from the table costs nothing (a local server).
"""

from __future__ import annotations

from tinystories.errors import UserError

# model: (USD per 1M prompt tokens, USD per 1M completion tokens)
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-4": (30.00, 60.00),
    "gpt-4-turbo": (10.00, 30.00),
}


def parse_price(text: str) -> tuple[float, float]:
    """'0.15,0.60' -> (0.15, 0.60) USD per 1M input, output tokens."""
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise UserError(
            f"--price must look like IN,OUT in USD per 1M tokens (e.g. 0.15,0.60), got {text!r}"
        ) from None
    if a < 0 or b < 0:
        raise UserError(f"--price {text}: prices cannot be negative")
    return a, b


def price_of(model: str, override: str = "") -> tuple[float, float] | None:
    """The (input, output) price of `model`: the override, else the table (also by prefix), else None."""
    if override:
        return parse_price(override)
    if model in PRICES:
        return PRICES[model]
    # Dated snapshots ("gpt-4o-mini-2024-07-18") cost what their family costs; longest name first.
    for name in sorted(PRICES, key=len, reverse=True):
        if model.startswith(name + "-"):
            return PRICES[name]
    return None


def cost_usd(price: tuple[float, float] | None, prompt_tokens: float, completion_tokens: float) -> float:
    """Dollars for one request's tokens (0 for an unpriced model)."""
    if price is None:
        return 0.0
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6
