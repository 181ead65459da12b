"""Decoding encoded images: one task a row in the decode pool, and the decode budget read
from the headers before any row is decoded."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.configuration.model_config import TensorSpec
from service.images import decode as images
from service.images.preprocess import BoundPreprocess, bind, parse_preprocessing
from service.tensors.errors import InvalidArgument


def photo_model() -> BoundPreprocess:
    spec = parse_preprocessing("m", {"mode": "normalize"})
    return bind("m", spec, (TensorSpec("x", "FP32", (3, 16, 16)),), batched=True)


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


class RecordingExecutor(Executor):
    """Runs each task at once, in this thread, and remembers how many it was given."""

    def __init__(self) -> None:
        self.tasks = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.tasks += 1
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


async def test_each_row_is_its_own_task_in_the_pool() -> None:
    pool = RecordingExecutor()
    rows = [png(40, 30), png(20, 20), png(64, 48)]
    batch = await images.decode_rows(photo_model(), rows, pool)
    assert pool.tasks == 3  # rows spread over the pool, never one task holding all of them
    assert batch.shape == (3, 16, 16, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch, images.decode_batch(photo_model(), rows))


async def test_the_first_bad_row_is_reported_by_its_index() -> None:
    with pytest.raises(InvalidArgument, match="row 1: empty image"):
        await images.decode_rows(photo_model(), [png(8, 8), b"", b"junk"], RecordingExecutor())


def test_the_budget_reads_headers_and_never_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(images, "decode_image", never)
    rows = [png(100, 100), png(300, 200)]
    headers = images.read_headers(photo_model(), rows, budget=70_000)
    assert [h.pixels for h in headers] == [10_000, 60_000]
    assert [(h.format, h.plain_jpeg) for h in headers] == [("PNG", False)] * 2
    with pytest.raises(InvalidArgument, match="declare 70,000 pixels, over the decode budget"):
        images.read_headers(photo_model(), rows, budget=69_999)
