"""The runtime's lock-free metric families, read back through prometheus-client's registry
and its text exposition, as Prometheus reads them."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from runtime.metrics import CounterFamily, HistogramFamily


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_counter_counts_per_label_set_and_is_exposed_as_a_total() -> None:
    registry = CollectorRegistry()
    counter = CounterFamily("app_things", "Things.", ["kind"], registry=registry)
    counter.labels("a").inc()
    counter.labels("a").inc(2.5)
    counter.labels("b").inc()
    samples = _samples(registry)
    assert samples[("app_things_total", (("kind", "a"),))] == 3.5
    assert samples[("app_things_total", (("kind", "b"),))] == 1.0
    assert "# TYPE app_things_total counter" in generate_latest(registry).decode()


def test_a_counter_without_labels_is_exposed_at_zero_before_counting() -> None:
    registry = CollectorRegistry()
    counter = CounterFamily("app_starts", "Starts.", registry=registry)
    assert _samples(registry)[("app_starts_total", ())] == 0.0
    counter.inc()
    assert _samples(registry)[("app_starts_total", ())] == 1.0


def test_a_histogram_counts_a_value_on_a_bound_in_that_bucket_cumulatively() -> None:
    registry = CollectorRegistry()
    histogram = HistogramFamily(
        "app_wait_seconds", "Waits.", ["route"], registry=registry, buckets=(0.1, 1.0, 0.5)
    )
    child = histogram.labels("r")
    child.observe(0.1)  # on the first bound: in it (Prometheus' "le")
    child.observe(0.7)
    for _ in range(3):
        child.observe(2.0)  # above every bound
    samples = _samples(registry)

    def bucket(le: str) -> float:
        return samples[("app_wait_seconds_bucket", (("le", le), ("route", "r")))]

    assert [bucket(le) for le in ("0.1", "0.5", "1.0", "+Inf")] == [1.0, 1.0, 2.0, 5.0]
    assert samples[("app_wait_seconds_count", (("route", "r"),))] == 5.0
    assert math.isclose(samples[("app_wait_seconds_sum", (("route", "r"),))], 0.1 + 0.7 + 6.0)


def test_the_wrong_number_of_label_values_is_refused() -> None:
    counter = CounterFamily("app_pairs", "Pairs.", ["a", "b"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="takes the labels"):
        counter.labels("only one")


def test_two_families_of_one_name_in_one_registry_are_refused() -> None:
    registry = CollectorRegistry()
    CounterFamily("app_twice", "Once.", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        CounterFamily("app_twice", "Twice.", registry=registry)
