"""A job's step history for plots and for export: pages downsampled without hiding a spike,
and the whole history as CSV, streamed page by page.

Downsampled pages read the numbers with ``JobStore.read_step_series`` (the job's series key,
one GET; the stream for jobs written before it existed) and keep real entries only: for each
bucket of consecutive entries, the ones holding the minimum and the maximum of the loss, of
the eval loss and of every gradient norm, plus the first and the last entry.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterator, Sequence

import numpy as np

from worker.store import METRIC_PREFIX, NORM_PREFIX, SERIES_LEAD, JobStore, StepRecord, StepSeries, series_columns

from .bodies import accept_items

MIN_POINTS = 16
MAX_POINTS = 20_000
CSV_MEDIA_TYPE = "text/csv"
CSV_PAGE = 1000  # stream entries read (and CSV rows written) at a time

_STEP, _TIME, _LOSS, _EVAL = range(len(SERIES_LEAD))
_CSV_TYPES = frozenset({"text/csv", "text/*"})
_OTHER_TYPES = frozenset({"application/json", "application/msgpack", "application/x-msgpack",
                          "application/vnd.msgpack"})


# -- which entries a downsampled page keeps -------------------------------------------------------

class _Columns:
    """The columns whose extremes must show, prepared once for any number of buckets: NaN is
    +inf for the minimum and -inf for the maximum (it is neither)."""

    def __init__(self, values: np.ndarray):
        self.values = values
        self.nan = np.isnan(values)
        self.low = np.where(self.nan, np.inf, values)
        self.high = np.where(self.nan, -np.inf, values)

    def extremes(self, buckets: int) -> np.ndarray:
        """Row indices of the minimum and maximum of every column in each of ``buckets`` runs of
        consecutive rows (the last one possibly shorter), plus the first and last row; sorted, unique."""
        n, width = self.values.shape
        size = -(-n // buckets)
        full = n // size
        head = full * size
        offsets = (np.arange(full) * size)[:, None]
        picks = [np.array([0, n - 1])]
        for table, arg in ((self.low, np.argmin), (self.high, np.argmax)):
            found = arg(table[:head].reshape(full, size, width), axis=1) + offsets
            if head < n:
                found = np.vstack([found, arg(table[head:], axis=0) + head])
            # a bucket with no number in a column "finds" a row that holds none there
            found = found[~self.nan[found, np.arange(width)]]
            picks.append(found.ravel())
        return np.unique(np.concatenate(picks))

    def by_priority(self, max_points: int) -> np.ndarray:
        """When not even one bucket fits: the first and last rows, then each column's minimum and
        maximum in column order, as many as ``max_points`` allow."""
        n = len(self.values)
        chosen: dict[int, None] = {0: None, n - 1: None}
        for j in range(self.values.shape[1]):
            if self.nan[:, j].all():
                continue
            for index in (int(self.low[:, j].argmin()), int(self.high[:, j].argmax())):
                if len(chosen) < max_points:
                    chosen.setdefault(index, None)
        return np.array(sorted(chosen))


# Bucket counts closer than this (relatively) to the best possible are good enough.
_TOLERANCE = 0.02


def downsample(values: np.ndarray, max_points: int) -> np.ndarray:
    """The row indices (sorted) of at most ``max_points`` rows of ``values`` (n x c, the columns
    whose extremes must show) that keep every bucket's minimum and maximum of every column, with
    (nearly) as many buckets as fit. All rows when there are no more than ``max_points``."""
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    columns = _Columns(values)
    # Each bucket adds at most two rows per column: this many buckets always fit ...
    low = max(1, (max_points - 2) // (2 * values.shape[1]))
    best = columns.extremes(low)
    if len(best) > max_points:
        return columns.by_priority(max_points)
    # ... but extremes often coincide (one spike is the maximum of several columns), and every
    # bucket adds at least one row: search between for (nearly) the most buckets that still fit.
    # The count grows with the buckets, though not strictly, so this settles on some bucket count
    # whose selection fits, never on one that does not.
    high, high_count = max_points, None
    while high - low > max(1, int(_TOLERANCE * low)):
        # the count grows about linearly with the buckets: interpolate, then bisect if that stalls
        rate_low = (len(best) - 2) / low
        if high_count is None:
            mid = int((max_points - 2) / max(rate_low, 1e-9))
        else:
            mid = low + int((high - low) * (max_points - len(best)) / max(high_count - len(best), 1))
        if not low < mid < high:
            mid = (low + high + 1) // 2
        picked = columns.extremes(mid)
        if len(picked) <= max_points:
            low, best = mid, picked
        else:
            high, high_count = mid - 1, len(picked)
    return best


def extreme_columns(series: StepSeries) -> np.ndarray:
    """The columns whose spikes must show: loss, eval_loss, the metrics and every gradient norm."""
    return series.values[:, _LOSS:]


# -- rendering --------------------------------------------------------------------------------

def _nullable(column: np.ndarray) -> list[float | None]:
    """A column as floats, non-finite numbers (and absent values, NaN) as None."""
    out: list[float | None] = column.tolist()
    for i in np.flatnonzero(~np.isfinite(column)).tolist():
        out[i] = None
    return out


def series_entries(series: StepSeries, rows: Sequence[int]) -> list[dict[str, Any]]:
    """Rows of a series as step entries (the StepEntry fields but ``grads``); non-finite numbers
    and absent eval losses are null, as in every JSON step entry."""
    chosen = series.values[np.asarray(rows, dtype=np.int64)]
    names, metric_names = series.norm_names, series.metric_names
    norms = zip(*(_nullable(chosen[:, series.column(NORM_PREFIX + n)]) for n in names)) if names \
        else iter(lambda: (), None)
    metrics = zip(*(_nullable(chosen[:, series.column(METRIC_PREFIX + m)]) for m in metric_names)) if metric_names \
        else iter(lambda: (), None)
    return [{"step": step, "loss": loss, "grad_norms": dict(zip(names, norm)), "eval_loss": eval_loss, "time": when,
             "metrics": dict(zip(metric_names, metric))}
            for step, loss, eval_loss, when, norm, metric in zip(
                chosen[:, _STEP].astype(np.int64).tolist(), _nullable(chosen[:, _LOSS]), _nullable(chosen[:, _EVAL]),
                chosen[:, _TIME].tolist(), norms, metrics)]


def downsampled_page(store: JobStore, job_id: str, *, after: int, max_points: int,
                     finished: bool) -> dict[str, Any]:
    """A StepsPage (as plain data) of the entries after ``after``: all of them when they are no
    more than ``max_points``, else a downsampled subset (``downsampled``, ``next_after`` null)."""
    series = store.read_step_series(job_id)
    if after:
        series = StepSeries(series.columns, series.values[series.values[:, _STEP] > after], series.source)
    rows = downsample(extreme_columns(series), max_points)
    entries = series_entries(series, rows)
    downsampled = len(rows) < len(series)
    if downsampled or finished:
        next_after = None
    else:
        next_after = entries[-1]["step"] if entries else after
    return {"steps": entries, "next_after": next_after, "downsampled": downsampled}


# -- CSV --------------------------------------------------------------------------------------

def wants_csv(accept: str | None) -> bool:
    """Whether an Accept header prefers CSV to JSON and msgpack (at equal quality CSV, as
    asked for by name, wins over a wildcard; JSON stays the default)."""
    if not accept:
        return False
    csv_q = other_q = 0.0
    for media, q in accept_items(accept):
        if media in _CSV_TYPES:
            csv_q = max(csv_q, q if media == CSV_MEDIA_TYPE else q - 0.001)
        elif media in _OTHER_TYPES or media.endswith("+json"):
            other_q = max(other_q, q)
        elif media in ("*/*", "application/*"):
            other_q = max(other_q, q - 0.001)
    return csv_q > 0 and csv_q >= other_q


def _cell(value: float | None) -> str:
    """A CSV number: repr (exact), nan/inf/-inf as numpy and pandas read them, '' when absent."""
    if value is None:
        return ""
    return repr(float(value)) if math.isfinite(value) else str(float(value))


def _csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()


def csv_lines(store: JobStore, job_id: str, first_page: list[StepRecord], *, after: int = 0,
              page: int = CSV_PAGE) -> Iterator[str]:
    """The step history after ``after`` as CSV text, a page of entries at a time: the header
    ``step,time,loss,eval_loss,metric:<name>...,grad_norm:<param>...`` (metrics and parameters as
    the first entry names them), then a row per entry. ``first_page`` is the first page, read
    already (so that a Redis failure is answered before the response starts); later pages are
    read as the text is sent."""
    names = list(first_page[0].grad_norms) if first_page else []
    metric_names = list(first_page[0].metrics) if first_page else []
    yield _csv_text([series_columns(names, metric_names)])
    records = first_page
    while records:
        yield _csv_text([[r.step, _cell(r.time), _cell(r.loss), _cell(r.eval_loss),
                          *(_cell(r.metrics.get(m)) for m in metric_names),
                          *(_cell(r.grad_norms.get(name)) for name in names)] for r in records])
        if len(records) < page:
            return
        records = store.read_steps(job_id, after=records[-1].step, limit=page)
