"""PrefixRouter (sans-IO): ported numbers, longest prefix, who accepts other carriers'
numbers, waiting for a home carrier that is reconnecting, Broadnet as a fourth carrier."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.push.routing import PrefixRouter


@dataclass
class Link:
    name: str
    prefixes: tuple[str, ...]
    accepts_other_carriers: bool = True
    failover_after_seconds: float = 0.0
    bound: bool = True

    def is_bound(self) -> bool:
        return self.bound


def carriers(**overrides: dict) -> list[Link]:
    links = [
        Link("cmcc", ("134", "138", "139")),
        Link("cucc", ("130", "131", "132")),
        Link("ctcc", ("133", "189")),
        Link("cbn", ("192",), accepts_other_carriers=False),  # China Broadnet
    ]
    for link in links:
        for key, value in overrides.get(link.name, {}).items():
            setattr(link, key, value)
    return links


def names(links: list) -> list[str]:
    return [link.name for link in links]


def test_broadnet_numbers_go_to_broadnet_and_it_takes_no_others() -> None:
    """192 numbers are Broadnet's; Broadnet (accepts_other_carriers false) is no failover
    target for the others' numbers, the three big carriers are for its numbers."""
    router = PrefixRouter(carriers())
    assert names(router.candidates("19212345678")) == ["cbn", "cmcc", "cucc", "ctcc"]
    assert names(router.candidates("13812345678")) == ["cmcc", "cucc", "ctcc"]


def test_only_carriers_that_accept_other_numbers_are_failover_targets() -> None:
    """With cucc not accepting other carriers' numbers, a refused cmcc number can only go
    to ctcc; with none accepting, nowhere."""
    router = PrefixRouter(carriers(cucc={"accepts_other_carriers": False}))
    assert router.choose("13812345678", {"cmcc"}).name == "ctcc"
    router = PrefixRouter(carriers(cucc={"accepts_other_carriers": False},
                                   ctcc={"accepts_other_carriers": False}))
    assert router.choose("13812345678", {"cmcc"}) is None
    assert not router.waiting_possible("13812345678", {"cmcc"})


def test_a_ported_number_goes_to_its_new_carrier_first() -> None:
    """13812345678 ported to ctcc: ctcc first, then (accepting others) its old carrier."""
    router = PrefixRouter(carriers())
    assert names(router.candidates("13812345678", ported="ctcc")) == ["ctcc", "cmcc", "cucc"]
    assert router.choose("13812345678", ported="ctcc").name == "ctcc"
    assert router.choose("13812345678", ported="nosuch").name == "cmcc"  # unknown name: prefix


def test_a_segment_nobody_serves_goes_to_any_carrier() -> None:
    """A number in a segment no carrier lists is offered to every carrier, in order."""
    assert names(PrefixRouter(carriers()).candidates("14712345678")) == ["cmcc", "cucc", "ctcc", "cbn"]


def test_reconnecting_home_carrier_is_waited_for_then_failed_over() -> None:
    """Both binds drop; cucc is back first.  A cmcc number waits (None) for
    failover_after_seconds instead of being funnelled through cucc; then cucc takes it;
    once cmcc is bound again it is cmcc's."""
    links = carriers(cmcc={"failover_after_seconds": 30.0})
    router = PrefixRouter(links)
    router.observe(100.0)
    links[0].bound = links[1].bound = False
    router.observe(101.0)
    links[1].bound = True
    router.observe(102.0)
    assert router.choose("13812345678", now=102.0) is None
    assert router.waiting_possible("13812345678")
    assert router.choose("13012345678", now=102.0).name == "cucc"
    assert router.choose("13812345678", now=131.0).name == "cucc"
    links[0].bound = True
    router.observe(132.0)
    assert router.choose("13812345678", now=132.0).name == "cmcc"


def test_a_carrier_never_bound_is_not_waited_for() -> None:
    """A carrier down since start (never bound) does not hold its numbers back."""
    links = carriers(ctcc={"failover_after_seconds": 30.0, "bound": False})
    router = PrefixRouter(links)
    router.observe(100.0)
    assert router.choose("18912345678", now=100.0).name == "cmcc"


def test_without_a_grace_period_the_first_bound_carrier_takes_it() -> None:
    """failover_after_seconds 0 is the old behaviour: fail over at once."""
    links = carriers()
    router = PrefixRouter(links)
    router.observe(100.0)
    links[0].bound = False
    router.observe(101.0)
    assert router.choose("13812345678", now=101.0).name == "cucc"
