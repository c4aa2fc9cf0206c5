"""The people directory alone: one person by every identifier, whatever the case or id length."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.salesforce.ids import to_18
from plugin.directory import Directory, Person

ANA_15 = "0055g00000AnaRz"
ANA = to_18(ANA_15)
BO_15 = "0055g00000BoChn"
BO = to_18(BO_15)


def crm(user_id: str, name: str, *emails: str, groups: tuple[str, ...] = (), active: bool = True) -> Person:
    """A person as the Salesforce user job stores them."""
    return Person(
        key=user_id,
        name=name,
        emails=emails,
        crm_ids=(user_id,),
        groups=groups,
        active=active,
        user_type="Standard",
    )


def configured(name: str, *emails: str, sf_id: str = "", groups: tuple[str, ...] = ()) -> Person:
    """A person as `[directory] people` gives them."""
    return Person(
        key=sf_id or emails[0], name=name, emails=emails, crm_ids=(sf_id,) if sf_id else (), groups=groups
    )


def ana_and_bo() -> Directory:
    return Directory(
        (
            crm(ANA, "Ana Ruiz", "ana.ruiz@contoso.com", "ana@contoso.onmicrosoft.com", groups=("Finance",)),
            crm(BO, "Bo Chen", "bo.chen@contoso.com"),
        )
    )


def test_an_email_a_upn_and_both_id_lengths_name_one_person() -> None:
    people = ana_and_bo()

    for a in (ANA, ANA_15, "ana.ruiz@contoso.com", "ana@contoso.onmicrosoft.com"):
        for b in (ANA, ANA_15, "ana.ruiz@contoso.com", "ana@contoso.onmicrosoft.com"):
            assert people.same_person(a, b), (a, b)
    assert not people.same_person("ana.ruiz@contoso.com", BO)
    assert not people.same_person(ANA_15, "bo.chen@contoso.com")
    assert people.find(ANA_15) is people.find("ana@contoso.onmicrosoft.com")


def test_emails_match_in_any_case_and_ids_by_their_suffix() -> None:
    people = ana_and_bo()

    assert people.same_person("Ana.Ruiz@CONTOSO.com", " ana@contoso.onmicrosoft.com ")
    assert people.same_person(ANA.lower(), "ana.ruiz@contoso.com")  # the suffix gives the case back
    assert people.same_person(ANA.upper(), ANA_15)
    # A 15-character id is case-sensitive: another case is another id, not Ana.
    assert people.find(ANA_15.lower()) is None


def test_unknown_identifiers_are_named_as_given_and_are_only_themselves() -> None:
    people = ana_and_bo()

    assert people.name_of("ana.ruiz@contoso.com") == "Ana Ruiz"
    assert people.name_of(ANA_15) == "Ana Ruiz"
    assert people.name_of("zoe@contoso.com") == "zoe@contoso.com"
    assert people.name_of("0055g00000ZzZzZ") == "0055g00000ZzZzZ"
    assert people.name_of("") == "someone" and people.name_of(None) == "someone"
    assert people.same_person("zoe@contoso.com", "ZOE@contoso.com")
    assert not people.same_person("zoe@contoso.com", "ana.ruiz@contoso.com")
    assert not people.same_person(None, ANA) and not people.same_person(ANA, "")


def test_groups_are_found_by_name_in_any_case_and_resolve_approvers() -> None:
    people = Directory(
        (
            crm(ANA, "Ana Ruiz", "ana.ruiz@contoso.com", groups=("Finance Approvers", "Finance_Approvers")),
            crm(BO, "Bo Chen", "bo.chen@contoso.com", groups=("finance approvers",)),
        )
    )

    assert [p.name for p in people.group(" FINANCE approvers ")] == ["Ana Ruiz", "Bo Chen"]
    assert [p.name for p in people.group("Finance_Approvers")] == ["Ana Ruiz"]
    assert people.group("Legal") == ()
    ana = people.find(ANA)
    assert ana is not None and ana.groups == ("Finance Approvers", "Finance_Approvers")
    found, loose = people.resolve_approvers(["Finance Approvers", "zoe@contoso.com"])
    assert [p.name for p in found] == ["Ana Ruiz", "Bo Chen"] and loose == ["zoe@contoso.com"]
    assert people.is_one_of(BO_15, ["Finance Approvers"])
    assert people.is_one_of("ZOE@contoso.com", ["Finance Approvers", "zoe@contoso.com"])
    assert not people.is_one_of("carl@contoso.com", ["Finance Approvers"])


def test_configuration_adds_to_the_crms_people_and_its_names_win() -> None:
    people = Directory(
        (
            crm(ANA, "ana.ruiz", "ana.ruiz@contoso.com", groups=("Finance",)),
            crm(BO, "Bo Chen", "bo.chen@contoso.com", active=False),
            # by 15-character id: a private address and a group the CRM does not know
            configured("Ana Ruiz", "ana@gmail.example", sf_id=ANA_15, groups=("Board",)),
            # by e-mail only: the UPN that Power Automate reports
            configured("Bo Chen (Finance)", "BO.CHEN@contoso.com", "bchen@contoso.onmicrosoft.com"),
            configured("Carl Ode", "carl@contoso.com"),
        )
    )

    assert [p.name for p in people.people] == ["Ana Ruiz", "Bo Chen (Finance)", "Carl Ode"]
    ana = people.find("ana@gmail.example")
    assert ana is not None and ana.key == ANA and ana.crm_ids == (ANA,)  # one id, 18 characters
    assert ana.emails == ("ana.ruiz@contoso.com", "ana@gmail.example")
    assert ana.groups == ("Finance", "Board") and ana.user_type == "Standard"
    assert people.same_person("bchen@contoso.onmicrosoft.com", BO_15)
    bo = people.find(BO)
    assert bo is not None and bo.active is False  # configuration cannot re-activate a CRM user
    carl = people.find("carl@contoso.com")
    assert carl is not None and carl.key == "carl@contoso.com"


def test_an_entry_naming_two_people_joins_them_whatever_the_order() -> None:
    ana = crm(ANA, "Ana Ruiz", "ana.ruiz@contoso.com")
    alias = configured("Ana", "ana.alias@contoso.com")
    bridge = configured("Ana Ruiz", "ana.alias@contoso.com", sf_id=ANA)

    for order in ([ana, alias, bridge], [alias, ana, bridge], [bridge, alias, ana]):
        people = Directory(tuple(order))
        assert len(people.people) == 1
        assert people.same_person("ana.alias@contoso.com", ANA_15)
        assert people.same_person("ana.alias@contoso.com", "ana.ruiz@contoso.com")


def test_a_person_round_trips_through_json() -> None:
    ana = crm(ANA, "Ana Ruiz", "ana.ruiz@contoso.com", groups=("Finance",), active=False)
    assert Person.from_json(ana.to_json()) == ana


# --- order does not matter ---

USERS = [to_18(f"0055g00000Usr{c}{d}") for c in "AbC" for d in "xY"]
EMAILS = [f"{n}@contoso.com" for n in ("ana", "bo", "carl", "dee", "eli", "fay")]
GROUPS = ["Finance", "finance", "Legal", "Board"]


@st.composite
def people_lists(draw: st.DrawFn) -> list[Person]:
    entries = []
    for _ in range(draw(st.integers(0, 7))):
        ids = draw(st.lists(st.sampled_from(USERS), max_size=1))
        emails = draw(st.lists(st.sampled_from(EMAILS), max_size=2, unique=True))
        # Identifiers as people write them: an id in 15 characters, an address in capitals.
        written_ids = tuple(i[:15] if draw(st.booleans()) else i for i in ids)
        written_emails = tuple(e.upper() if draw(st.booleans()) else e for e in emails)
        entries.append(
            Person(
                key=(ids or emails or ["nobody"])[0],
                name=draw(st.sampled_from(["Ana", "Bo", "Carl"])),
                emails=written_emails,
                crm_ids=written_ids,
                groups=tuple(draw(st.lists(st.sampled_from(GROUPS), max_size=2))),
                active=draw(st.booleans()),
            )
        )
    return entries


def answers(people: Directory) -> dict[str, object]:
    """Everything rules ask that does not depend on which entry came last (names do, by design)."""
    idents = [*USERS, *(u[:15] for u in USERS), *EMAILS, "stranger@contoso.com"]

    def identity(person: Person | None) -> object:
        if person is None:
            return None
        return (
            frozenset(e.lower() for e in person.emails),
            frozenset(i[:15] for i in person.crm_ids),
            frozenset(g.lower() for g in person.groups),
            person.active,
        )

    return {
        "same": {(a, b) for a in idents for b in idents if people.same_person(a, b)},
        "find": {i: identity(people.find(i)) for i in idents},
        "groups": {g: frozenset(identity(p) for p in people.group(g)) for g in GROUPS},
        "approvers": {i: people.is_one_of(i, ["Finance", EMAILS[0], USERS[0]]) for i in idents},
        "count": len(people.people),
    }


@settings(max_examples=300, deadline=None)
@given(people_lists(), st.randoms(use_true_random=False))
def test_the_directorys_answers_do_not_depend_on_the_order_people_are_given_in(
    entries: list[Person], rnd: random.Random
) -> None:
    shuffled = list(entries)
    rnd.shuffle(shuffled)

    assert answers(Directory(tuple(entries))) == answers(Directory(tuple(shuffled)))
