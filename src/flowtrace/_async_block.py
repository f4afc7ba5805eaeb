"""`async with` for a block whose work is synchronous: `__aenter__` / `__aexit__` are its
`__enter__` / `__exit__` (a `with flow(...)` block, `continue_trace`)."""

from __future__ import annotations

from abc import abstractmethod
from types import TracebackType
from typing import Generic, TypeVar

__all__ = ["AsyncBlock"]

_T = TypeVar("_T")


class AsyncBlock(Generic[_T]):
    """Mix in for a context manager whose `__enter__` returns `_T`."""

    __slots__ = ()

    @abstractmethod
    def __enter__(self) -> _T: ...

    @abstractmethod
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def __aenter__(self) -> _T:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
