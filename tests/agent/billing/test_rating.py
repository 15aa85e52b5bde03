"""Rating a quantity: worked examples from Stripe's, Lago's and m3ter's pricing docs
(graduated versus volume on the same tiers, package pricing, flat fees per tier), and a
property test against a naive reference that prices unit by unit."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterkit_agent.billing import Aggregation, Band, PricingLine, rate, to_units
from meterkit_agent.billing.money import round_money

SUM = Aggregation("api_calls", "calls", "SUM")


def line(
    bands: list[tuple[str, str] | tuple[str, str, str]],
    *,
    cumulative: bool = True,
    per_unit: str = "1",
    rounding: str = "NONE",
) -> PricingLine:
    return PricingLine(
        SUM,
        tuple(Band(*(Decimal(v) for v in band)) for band in bands),
        Decimal(per_unit),
        rounding,
        cumulative,
    )


def charge(pricing: PricingLine, quantity: int | str, minor_units: int = 2) -> Decimal:
    units = to_units(Decimal(quantity), pricing.quantity_per_unit, pricing.rounding)
    return round_money(rate(pricing, units).amount, minor_units)


#: Stripe's Typographic tiers: 1-5 fonts at 7 USD, 6-10 at 6.50, 11+ at 6
#: (https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing). Stripe's tier
#: "6-10" is m3ter's band above lower limit 5.
TYPOGRAPHIC = [("0", "7"), ("5", "6.5"), ("10", "6")]


@pytest.mark.parametrize(
    ("fonts", "volume", "graduated"),
    [
        (1, "7.00", "7.00"),
        (5, "35.00", "35.00"),
        (6, "39.00", "41.50"),  # volume: all 6 at 6.50; graduated: 5 x 7 + 1 x 6.50
        (20, "120.00", "127.50"),  # graduated: 35 + 32.50 + 10 x 6
        (25, "150.00", "157.50"),
        (0, "0.00", "0.00"),
    ],
)
def test_stripe_graduated_versus_volume_on_the_same_tiers(fonts: int, volume: str, graduated: str) -> None:
    assert charge(line(TYPOGRAPHIC, cumulative=False), fonts) == Decimal(volume)
    assert charge(line(TYPOGRAPHIC, cumulative=True), fonts) == Decimal(graduated)


def test_the_issues_bands_graduated_and_volume() -> None:
    bands = [("0", "0"), ("100", "0.10"), ("1000", "0.05", "0")]
    graduated = rate(line(bands), Fraction(1500))
    assert [(b.lower_limit, b.units, b.amount) for b in graduated.bands] == [
        (0, 100, 0),
        (100, 900, 90),
        (1000, 500, 25),
    ]
    assert graduated.amount == 115
    volume = rate(line(bands, cumulative=False), Fraction(1500))
    assert [(b.lower_limit, b.units, b.unit_price, b.amount) for b in volume.bands] == [
        (1000, 1500, Decimal("0.05"), 75)
    ]


def test_a_quantity_on_a_band_boundary_belongs_to_the_lower_band() -> None:
    """Stripe's ``up_to`` is inclusive: 100 units on bands starting at 0 and 100 are all
    in the first; the 101st reaches the second."""
    volume = line([("0", "1"), ("100", "0.5", "10")], cumulative=False)
    assert charge(volume, 100) == Decimal("100.00")
    assert charge(volume, 101) == Decimal("60.50")  # 101 x 0.50 + the second band's fixed 10


@pytest.mark.parametrize(("minutes", "usd"), [(150, "30.00"), (120, "20.00"), (1, "10.00"), (0, "0.00")])
def test_stripe_package_pricing_is_quantity_per_unit_rounded_up(minutes: int, usd: str) -> None:
    """Stripe's car rental: 10 USD an hour, usage reported in minutes,
    ``transform_quantity[divide_by]=60, [round]=up``: 150 minutes are 3 hours, 30 USD
    (https://docs.stripe.com/billing/subscriptions/usage-based/transform-quantities)."""
    assert charge(line([("0", "10")], per_unit="60", rounding="UP"), minutes) == Decimal(usd)


@pytest.mark.parametrize(("users", "usd_up", "usd_down"), [(1, 10, 0), (5, 10, 10), (6, 20, 10), (7, 20, 10)])
def test_stripe_per_five_users_rounded_up_or_down(users: int, usd_up: int, usd_down: int) -> None:
    """Stripe's 10 USD for every 5 users or portion thereof; ``round=down`` charges only
    for full packages (https://stripe.com/docs/billing/subscriptions/quantity-transformation)."""
    assert charge(line([("0", "10")], per_unit="5", rounding="UP"), users) == usd_up
    assert charge(line([("0", "10")], per_unit="5", rounding="DOWN"), users) == usd_down


def test_lago_package_with_free_units() -> None:
    """Lago: 5 USD per 100 units, the first 100 free; 201 units cost 0 + 5 + 5 = 10
    (https://getlago.com/docs/guide/plans/charges/charge-models/package): packages of 100
    rounded up, the first package in a free band."""
    package = line([("0", "0"), ("1", "5")], per_unit="100", rounding="UP")
    assert [charge(package, n) for n in (0, 100, 101, 200, 201)] == [0, 0, 5, 5, 10]


def test_m3ter_worked_example_storage_bands() -> None:
    """m3ter's worked example 1: 0.15 USD per GB for the first 500 GB, 0.10 thereafter
    (https://m3ter.com/docs/guides/getting-started/metering-for-production-worked-examples/
    worked-example-1-cloud-storage-and-file-cleanup)."""
    storage = line([("0", "0.15"), ("500", "0.10")])
    assert charge(storage, 400) == Decimal("60.00")
    assert charge(storage, 750) == Decimal("100.00")  # 500 x 0.15 + 250 x 0.10
    assert charge(storage, "500.5") == Decimal("75.05")


def test_fixed_prices_are_added_when_a_band_is_reached() -> None:
    bands = [("0", "0", "5"), ("10", "1", "20"), ("100", "0.5", "50")]
    assert charge(line(bands), 0) == 0  # nothing reached, nothing charged
    assert charge(line(bands), 1) == 5
    assert charge(line(bands), 11) == 5 + 20 + 1
    assert charge(line(bands), 150) == 5 + 20 + 90 + 50 + 25
    assert charge(line(bands, cumulative=False), 150) == 75 + 50  # volume: the band reached only


def test_nearest_rounds_half_away_from_zero_and_none_keeps_the_exact_quotient() -> None:
    assert to_units(Decimal(15), Decimal(10), "NEAREST") == 2
    assert to_units(Decimal(14), Decimal(10), "NEAREST") == 1
    assert to_units(Decimal(1), Decimal(3), "NONE") == Fraction(1, 3)
    thirds = line([("0", "0.03")], per_unit="3")
    assert rate(thirds, Fraction(1, 3)).amount == Fraction(1, 100)  # exact: 1/3 unit x 0.03


def test_line_amounts_round_half_up_to_the_minor_unit() -> None:
    """Stripe: 30 units at 0.05 cents is 1.5 cents, rounded up to 2
    (https://stripe.com/docs/billing/subscriptions/decimal-amounts)."""
    assert charge(line([("0", "0.0005")]), 30) == Decimal("0.02")
    assert charge(line([("0", "0.0005")]), 29) == Decimal("0.01")
    assert charge(line([("0", "0.5")]), 3, minor_units=0) == Decimal("2")  # JPY: 1.5 yen is 2


def test_negative_units_are_refused() -> None:
    with pytest.raises(ValueError, match="negative quantity"):
        rate(line(TYPOGRAPHIC), Fraction(-1))


def test_tiers_spanning_the_plan_price_what_a_period_adds_to_the_running_total() -> None:
    bands = [("0", "0", "1"), ("100", "0.10", "7"), ("1000", "0.05")]
    graduated = line(bands)
    for before, total in ((0, 50), (50, 150), (150, 1500), (1000, 1000), (99, 101)):
        period = rate(graduated, Fraction(total), Fraction(before)).amount
        assert period == rate(graduated, Fraction(total)).amount - rate(graduated, Fraction(before)).amount
    volume = line(bands, cumulative=False)
    assert rate(volume, Fraction(150), Fraction(50)).amount == 100 * Fraction("0.10") + 7  # reached band 2 now
    assert rate(volume, Fraction(1500), Fraction(150)).amount == 1350 * Fraction("0.05")  # band 3, no fixed price


# -- against a naive reference --------------------------------------------------------

#: (width, unit price in cents, fixed price in cents) of each band, from lower limit 0
band_lists = st.lists(st.tuples(st.integers(1, 40), st.integers(0, 300), st.integers(0, 500)), min_size=1, max_size=5)


def bands_from(steps: list[tuple[int, int, int]]) -> list[Band]:
    """Bands from (width, unit price in cents, fixed price in cents) steps, from 0."""
    out, lower = [], 0
    for width, price, fixed in steps:
        out.append(Band(Decimal(lower), Decimal(price).scaleb(-2), Decimal(fixed).scaleb(-2)))
        lower += width
    return out


def naive_graduated(bands: list[Band], quantity: int) -> Fraction:
    """Unit by unit: the n-th unit is priced by the band with lower_limit < n <= next;
    each band's fixed price once if any unit fell in it."""
    total, reached = Fraction(0), set()
    for n in range(1, quantity + 1):
        i = max(k for k, b in enumerate(bands) if b.lower_limit < n)
        total += Fraction(bands[i].unit_price)
        reached.add(i)
    return total + sum((Fraction(bands[i].fixed_price) for i in reached), Fraction(0))


def naive_volume(bands: list[Band], quantity: int) -> Fraction:
    if quantity == 0:
        return Fraction(0)
    band = [b for b in bands if b.lower_limit < quantity][-1]
    return quantity * Fraction(band.unit_price) + Fraction(band.fixed_price)


@settings(max_examples=300, deadline=None)
@given(band_lists, st.integers(0, 250), st.integers(0, 250))
def test_rating_equals_a_naive_unit_by_unit_reference(
    steps: list[tuple[int, int, int]], quantity: int, before: int
) -> None:
    bands = bands_from(steps)
    pricing = PricingLine(SUM, tuple(bands))
    assert rate(pricing, Fraction(quantity)).amount == naive_graduated(bands, quantity)
    volume = PricingLine(SUM, tuple(bands), cumulative=False)
    assert rate(volume, Fraction(quantity)).amount == naive_volume(bands, quantity)
    low, high = sorted((before, quantity))
    spanned = rate(pricing, Fraction(high), Fraction(low)).amount
    assert spanned == naive_graduated(bands, high) - naive_graduated(bands, low)


@settings(max_examples=200, deadline=None)
@given(band_lists, st.integers(0, 5000), st.integers(1, 50), st.sampled_from(["UP", "DOWN", "NEAREST"]))
def test_packages_equal_the_reference_on_the_rounded_package_count(
    steps: list[tuple[int, int, int]], quantity: int, per_unit: int, rounding: str
) -> None:
    bands = bands_from(steps)
    units = to_units(Decimal(quantity), Decimal(per_unit), rounding)
    packages = {
        "UP": -(-quantity // per_unit),
        "DOWN": quantity // per_unit,
        "NEAREST": (2 * quantity + per_unit) // (2 * per_unit),
    }[rounding]
    assert units == packages
    assert rate(PricingLine(SUM, tuple(bands)), units).amount == naive_graduated(bands, packages)
