"""The cost of an LLM call from the `genai-prices` table (extra `prices`, optional).

`genai_prices.calc_price` costs about a millisecond a call, more than the rest of a span's
ingest; the table's prices are per million tokens of each kind, so a model's unit prices are
looked up once (per model, provider and day: prices change on dates) and multiplied here. A
model whose prices are tiered (by prompt size) goes through `calc_price` each time.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, NamedTuple

__all__ = ["llm_cost"]

_PER_TOKEN = Decimal(1_000_000)
_DAY_S = 86_400


class _Units(NamedTuple):
    """Dollars per token; None for a kind of token the model does not price."""

    input: Decimal | None
    output: Decimal | None
    cache_read: Decimal | None
    cache_write: Decimal | None


def _unit(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return Decimal(value) / _PER_TOKEN
    raise TypeError("tiered")  # TieredPrices: priced per call


@functools.lru_cache(maxsize=1024)
def _units(model: str, provider: str | None, day: int) -> _Units | str | None:
    """The model's unit prices on `day` (days since the epoch), "tiered" when they depend on the
    call, None when unknown."""
    try:
        from genai_prices import data_snapshot
    except ImportError:
        return None
    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
        price = info.get_prices(datetime.now(timezone.utc))
        return _Units(
            _unit(price.input_mtok),
            _unit(price.output_mtok),
            _unit(price.cache_read_mtok),
            _unit(price.cache_write_mtok),
        )
    except TypeError:
        return "tiered"
    except Exception:  # an unknown model (LookupError), or a table it cannot read
        return None


def _calc(model: str, provider: str | None, usage: Mapping[str, int]) -> tuple[float, float] | None:
    try:
        from genai_prices import Usage, calc_price

        price = calc_price(
            Usage(
                input_tokens=usage.get("prompt_tokens"),
                output_tokens=usage.get("output_tokens"),
                cache_read_tokens=usage.get("cache_read_tokens"),
                cache_write_tokens=usage.get("cache_write_tokens"),
            ),
            model,
            provider_id=provider,
        )
        return float(price.input_price), float(price.output_price)
    except Exception:
        return None


def llm_cost(
    model: str, provider: str | None, usage: Mapping[str, int]
) -> tuple[float, float] | None:
    """(input cost, output cost) in dollars of a call with this usage (`prompt_tokens`, which
    include the cache tokens, `output_tokens`, `cache_read_tokens`, `cache_write_tokens`), or
    None when the table is not installed or does not know the model."""
    units = _units(model, provider, int(time.time()) // _DAY_S)
    if units is None:
        return None
    if isinstance(units, str):
        return _calc(model, provider, usage)
    cache_read = usage.get("cache_read_tokens", 0)
    cache_write = usage.get("cache_write_tokens", 0)
    uncached = max(usage.get("prompt_tokens", 0) - cache_read - cache_write, 0)
    base = units.input or Decimal(0)
    input_cost = (
        uncached * base
        + cache_read * (units.cache_read if units.cache_read is not None else base)
        + cache_write * (units.cache_write if units.cache_write is not None else base)
    )
    output_cost = usage.get("output_tokens", 0) * (units.output or Decimal(0))
    return float(input_cost), float(output_cost)
