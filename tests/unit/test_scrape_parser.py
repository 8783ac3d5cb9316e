"""Targeted /metrics parser on captured pages of every engine, and on garbage."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from epp.scrape import parser
from epp.scrape.parser import MetricsParseError, parse_labels, parse_metrics
from epp.types import ENGINE_SGLANG, ENGINE_TRITON, ENGINE_TRTLLM, ENGINE_VLLM

PAYLOADS = Path(__file__).parent / "payloads"


def page(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


MINIMAL = (
    "# HELP vllm:num_requests_waiting w\n# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{model_name="m"} 1.0\n'
    'vllm:num_requests_running{model_name="m"} 2.0\n'
    'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
)


def test_vllm_v0_names() -> None:
    m = parse_metrics(page("vllm_v0.txt"), ENGINE_VLLM, 12.5)
    assert (m.waiting, m.running, m.kv_usage) == (3, 7, 0.4375)
    assert m.max_lora == 4
    assert m.lora_active == {"sql-lora", "tweet-lora"}  # newest series, names trimmed
    assert m.lora_waiting == {"french-lora"}
    assert (m.block_size, m.num_gpu_blocks) == (16, 7281)
    assert m.scraped_at == 12.5


def test_vllm_v1_two_engines_sums_queues_and_averages_kv() -> None:
    body = page("vllm_v1_2engines.txt")
    assert len(body) >= 30_000
    m = parse_metrics(body, ENGINE_VLLM, 1.0)
    # waiting_by_reason shares the prefix of num_requests_waiting and must not be counted
    assert (m.waiting, m.running) == (2 + 9, 5 + 6)
    assert m.kv_usage == pytest.approx(0.5)
    assert (m.block_size, m.num_gpu_blocks) == (16, 2 * 27000)
    assert m.max_lora == 8
    assert m.lora_active == {"sql-lora", "tweet-lora"}
    assert m.lora_waiting == {"chat-lora"}


def test_str_and_bytes_agree() -> None:
    body = page("vllm_v1_2engines.txt")
    assert parse_metrics(body, ENGINE_VLLM, 0.0) == parse_metrics(body.decode(), ENGINE_VLLM, 0.0)


def test_new_kv_name_preferred_over_deprecated_one() -> None:
    text = MINIMAL + 'vllm:gpu_cache_usage_perc{model_name="m"} 0.9\n'
    assert parse_metrics(text, ENGINE_VLLM, 0.0).kv_usage == 0.5
    old_only = MINIMAL.replace("kv_cache_usage_perc", "gpu_cache_usage_perc")
    assert parse_metrics(old_only, ENGINE_VLLM, 0.0).kv_usage == 0.5


def test_optional_families_absent() -> None:
    m = parse_metrics(MINIMAL, ENGINE_VLLM, 0.0)
    assert (m.max_lora, m.lora_active, m.block_size, m.num_gpu_blocks) == (
        0,
        frozenset(),
        None,
        None,
    )


def test_first_line_timestamps_crlf_and_openmetrics() -> None:
    text = (
        "vllm:num_requests_waiting 4 1700000000000\r\n"
        'vllm:num_requests_running{engine="0"} 1.5e+01\r\n'
        'vllm:kv_cache_usage_perc{engine="0"} 1e-1 1700000000000\r\n# EOF\r\n'
    )
    m = parse_metrics(text, ENGINE_VLLM, 0.0)
    assert (m.waiting, m.running, m.kv_usage) == (4, 15, 0.1)


def test_lora_newest_per_engine_and_nan_ignored() -> None:
    def line(engine: str, max_lora: str, running: str, waiting: str, value: str) -> str:
        labels = f'engine="{engine}",max_lora="{max_lora}"'
        labels += f',running_lora_adapters="{running}",waiting_lora_adapters="{waiting}"'
        return f"vllm:lora_requests_info{{{labels}}} {value}\n"

    text = MINIMAL + line("0", "2", "a", "", "10") + line("0", "2", "old", "", "5")
    text += line("1", "3", "b, ", "c", "7") + line("1", "9", "nan", "", "NaN")
    m = parse_metrics(text, ENGINE_VLLM, 0.0)
    assert m.max_lora == 3
    assert m.lora_active == {"a", "b"}
    assert m.lora_waiting == {"c"}


def test_kv_clamped_to_fraction() -> None:
    text = MINIMAL.replace("} 0.5", "} 1.25")
    assert parse_metrics(text, ENGINE_VLLM, 0.0).kv_usage == 1.0


def test_sglang() -> None:
    m = parse_metrics(page("sglang.txt"), ENGINE_SGLANG, 0.0)
    assert (m.waiting, m.running) == (1 + 2, 4 + 11)  # two dp ranks summed
    assert m.kv_usage == pytest.approx(0.4)
    assert (m.block_size, m.num_gpu_blocks) == (1, 180000)
    assert m.max_lora == 0


def test_trtllm_serve() -> None:
    m = parse_metrics(page("trtllm_serve.txt"), ENGINE_TRTLLM, 0.0)
    assert (m.waiting, m.running, m.kv_usage) == (4, 6, 0.625)
    assert (m.block_size, m.num_gpu_blocks) == (32, 4096)


def test_triton_selects_series_by_label() -> None:
    m = parse_metrics(page("triton_trtllm.txt"), ENGINE_TRITON, 0.0)
    assert (m.waiting, m.running, m.kv_usage) == (5, 8, 0.375)  # not active=9, max=256
    assert (m.block_size, m.num_gpu_blocks) == (64, 4096)


@pytest.mark.parametrize(
    ("name", "engine", "seconds", "count"),
    [
        ("vllm_v1_2engines.txt", ENGINE_VLLM, 1.139393600090904 + 0.6891979635024211, 70.0),
        ("sglang.txt", ENGINE_SGLANG, 1.274945595308197, 59.0),
        ("trtllm_serve.txt", ENGINE_TRTLLM, 0.36470736429102296, 38.0),
        ("triton_trtllm.txt", ENGINE_TRITON, None, None),
    ],
)
def test_inter_token_latency_counters_summed_over_engines(
    name: str, engine: str, seconds: float | None, count: float | None
) -> None:
    m = parse_metrics(page(name), engine, 0.0)
    assert m.itl_count == count
    assert m.itl_seconds == (pytest.approx(seconds) if seconds is not None else None)
    assert parse_metrics(MINIMAL, ENGINE_VLLM, 0.0).itl_count is None  # no histogram: no pace


def test_older_vllm_time_per_output_token_name() -> None:
    text = MINIMAL + (
        'vllm:time_per_output_token_seconds_sum{model_name="m"} 2.5\n'
        'vllm:time_per_output_token_seconds_count{model_name="m"} 100.0\n'
    )
    m = parse_metrics(text, ENGINE_VLLM, 0.0)
    assert (m.itl_seconds, m.itl_count) == (2.5, 100.0)


def test_wrong_engine_finds_nothing() -> None:
    with pytest.raises(MetricsParseError, match="no waiting metric"):
        parse_metrics(page("sglang.txt"), ENGINE_VLLM, 0.0)


def test_unknown_engine() -> None:
    with pytest.raises(MetricsParseError, match="unknown engine"):
        parse_metrics(MINIMAL, "tgi", 0.0)


def test_label_escapes() -> None:
    assert parse_labels(r'a="x\"y}",b="c\\d\n" , c=""') == {"a": 'x"y}', "b": "c\\d\n", "c": ""}
    with pytest.raises(MetricsParseError):
        parse_labels('a="unterminated')


HTML = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>nope</body></html>"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param(HTML, "no waiting metric", id="html"),
        pytest.param(b"", "no waiting metric", id="empty"),
        pytest.param(os.urandom(4096), "", id="binary"),
        pytest.param(MINIMAL.replace("} 0.5", "} NaN"), "non-finite", id="nan-kv"),
        pytest.param(MINIMAL.replace("} 1.0", "} +Inf"), "non-finite", id="inf-waiting"),
        pytest.param(MINIMAL.replace("} 1.0", "} -3"), "negative", id="negative"),
        pytest.param(MINIMAL.replace("} 2.0", "} two"), "bad value", id="bad-value"),
        pytest.param(MINIMAL.replace("} 2.0", "} 2.0 17 extra"), "bad sample", id="extra-field"),
        pytest.param(MINIMAL.replace('"m"} 2.0', '"m"'), "truncated labels", id="cut-labels"),
        pytest.param(MINIMAL.replace('{model_name="m"} 2.0', ""), "no value", id="no-value"),
        pytest.param(MINIMAL[:-4], "", id="cut-at-end"),
        pytest.param(MINIMAL[: MINIMAL.index("vllm:num_requests_running") + 19], "", id="cut-name"),
    ],
)
def test_garbage_raises(text: str | bytes, match: str) -> None:
    with pytest.raises(MetricsParseError, match=match or None):
        parse_metrics(text, ENGINE_VLLM, 0.0)


def test_truncated_real_page() -> None:
    body = page("vllm_v1_2engines.txt")
    cut = body.index(b'vllm:num_requests_waiting{engine="1"') + 30
    with pytest.raises(MetricsParseError):
        parse_metrics(body[:cut], ENGINE_VLLM, 0.0)


def test_malformed_lora_line_rejected() -> None:
    text = MINIMAL + 'vllm:lora_requests_info{max_lora="2",running_lora_adapters=a} 1\n'
    with pytest.raises(MetricsParseError, match="malformed labels"):
        parse_metrics(text, ENGINE_VLLM, 0.0)


def test_is_a_value_error() -> None:
    assert issubclass(MetricsParseError, ValueError)


def test_huge_page_parses_and_stays_fast() -> None:
    filler = page("vllm_v1_2engines.txt").split(b"vllm:num_requests_running")[0]
    body = filler * (20_000_000 // len(filler) + 1) + MINIMAL.encode()
    assert len(body) >= 20_000_000
    started = time.perf_counter()
    m = parse_metrics(body, ENGINE_VLLM, 0.0)
    elapsed = time.perf_counter() - started
    assert (m.waiting, m.running, m.kv_usage) == (1, 2, 0.5)
    assert elapsed < 2.0, elapsed  # linear scans only; a full parse of 20 MB takes tens of seconds


@pytest.mark.parametrize(
    "name", ["vllm_v0.txt", "vllm_v1_2engines.txt", "sglang.txt", "trtllm_serve.txt"]
)
def test_the_one_pass_scan_reads_what_the_line_by_line_scan_reads(name: str) -> None:
    engine = {"sglang.txt": ENGINE_SGLANG, "trtllm_serve.txt": ENGINE_TRTLLM}.get(name, "vllm")
    text = page(name).decode()
    scanner = parser._SCANNERS[engine]
    assert parser._scan(text, scanner) == parser._scan_lines(text, scanner)
    crlf = text.replace("\n", "\r\n")  # and with CRLF line ends and a timestamp on a line
    stamped = crlf.replace(" 1.0\r\n", " 1.0 1700000000000\r\n", 1)
    assert parser._scan(stamped, scanner) == parser._scan_lines(stamped, scanner)


def test_a_longer_family_name_that_starts_like_a_wanted_one_is_not_read() -> None:
    text = MINIMAL + 'vllm:num_requests_waiting_total{model_name="m"} 7\n'
    assert parse_metrics(text, ENGINE_VLLM, 0.0).waiting == 1
