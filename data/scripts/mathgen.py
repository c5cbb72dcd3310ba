"""Seeded generator of GSM8K-style math word problems with step-by-step answers.

Each record has MetaMathQA's field names: ``query`` (the problem) and ``response``
(the worked solution, ending in ``The answer is: N``).  ``story`` sentences and
``fact`` lines are the non-task text the tiny model is pre-trained on.

    python data/scripts/mathgen.py --seed 0 --n 4000 --out spectra/default/math_qa.jsonl
"""

from __future__ import annotations

import argparse
import json
import operator
import random
from collections.abc import Callable
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "spectra" / "default" / "math_qa.jsonl"
NAMES = [
    ("Natalia", "she"), ("James", "he"), ("Maria", "she"), ("Tom", "he"), ("Aisha", "she"),
    ("Ben", "he"), ("Chloe", "she"), ("Diego", "he"), ("Emma", "she"), ("Farid", "he"),
    ("Grace", "she"), ("Hiro", "he"), ("Ines", "she"), ("Jack", "he"), ("Lena", "she"),
    ("Omar", "he"), ("Priya", "she"), ("Raj", "he"), ("Sofia", "she"), ("Victor", "he"),
]  # fmt: skip
ITEMS = ["apples", "pencils", "cookies", "stickers", "marbles", "books", "cards", "shells",
         "muffins", "toy cars", "flowers", "candles", "balloons", "eggs", "stamps"]  # fmt: skip
PLACES = ["market", "park", "library", "school", "farm", "beach", "bakery", "garden", "zoo"]
VERBS = ["found", "bought", "made", "collected", "painted", "counted", "sold", "gave away"]
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

Problem = tuple[str, list[str], int]


def _person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(NAMES)


def half_as_many(rng: random.Random) -> Problem:
    """Sold some, then half as many."""
    (n, p), item, a = _person(rng), rng.choice(ITEMS), 2 * rng.randint(6, 60)
    q = (f"{n} sold {item} to {a} of {'her' if p == 'she' else 'his'} friends in April, and then "
         f"{p} sold half as many {item} in May. How many {item} did {n} sell altogether in April "
         f"and May?")  # fmt: skip
    steps = [
        f"{n} sold {a}/2 = {a // 2} {item} in May.",
        f"{n} sold {a}+{a // 2} = {a + a // 2} {item} altogether in April and May.",
    ]
    return q, steps, a + a // 2


def hourly_wage(rng: random.Random) -> Problem:
    """Pay per hour times hours."""
    (n, p), rate, hours = _person(rng), rng.randint(5, 30), rng.randint(2, 12)
    job = rng.choice(["babysitting", "tutoring", "gardening", "dog walking"])
    q = (f"{n} earns ${rate} an hour for {job}. This week, {p} did {hours} hours of {job}. "
         f"How much did {p} earn?")  # fmt: skip
    return q, [f"{n} earned {rate} * {hours} = ${rate * hours}."], rate * hours


def change_back(rng: random.Random) -> Problem:
    """Buy several items and get change."""
    (n, p), item = _person(rng), rng.choice(ITEMS)
    count, price = rng.randint(2, 9), rng.randint(2, 11)
    cost = count * price
    bill = next(b for b in (20, 50, 100, 200) if b > cost)
    q = (f"{n} buys {count} {item} at ${price} each and pays with a ${bill} bill. "
         f"How much change does {p} get?")  # fmt: skip
    steps = [f"The {item} cost {count} * {price} = ${cost}.",
             f"So {n} gets {bill} - {cost} = ${bill - cost} in change."]  # fmt: skip
    return q, steps, bill - cost


def pages_left(rng: random.Random) -> Problem:
    """Read some pages, then twice as many; pages left."""
    (n, p), d1 = _person(rng), rng.randint(5, 40)
    total = 3 * d1 + rng.randint(10, 200)
    d1_day, d2_day = rng.sample(DAYS, 2)
    q = (f"{n} has a book with {total} pages. {p.capitalize()} read {d1} pages on {d1_day} and "
         f"twice as many pages on {d2_day}. How many pages are left to read?")  # fmt: skip
    steps = [f"On {d2_day}, {n} read {d1} * 2 = {2 * d1} pages.",
             f"In total {p} read {d1} + {2 * d1} = {3 * d1} pages.",
             f"There are {total} - {3 * d1} = {total - 3 * d1} pages left."]  # fmt: skip
    return q, steps, total - 3 * d1


def weekly_distance(rng: random.Random) -> Problem:
    """Miles per day, days per week, weeks."""
    (n, p), k, d, w = _person(rng), rng.randint(2, 12), rng.randint(3, 7), rng.randint(2, 8)
    q = (f"{n} runs {k} miles a day for {d} days a week. How many miles does {p} run in "
         f"{w} weeks?")  # fmt: skip
    steps = [f"Each week {n} runs {k} * {d} = {k * d} miles.",
             f"In {w} weeks {p} runs {k * d} * {w} = {k * d * w} miles."]  # fmt: skip
    return q, steps, k * d * w


def share_equally(rng: random.Random) -> Problem:
    """Share equally, then get more."""
    (n, _), item = _person(rng), rng.choice(ITEMS)
    k, each, more = rng.randint(2, 9), rng.randint(3, 15), rng.randint(2, 30)
    total = k * each
    q = (f"{n} has {total} {item} and shares them equally among {k} friends. One friend then "
         f"finds {more} more {item}. How many {item} does that friend have now?")  # fmt: skip
    steps = [f"Each friend gets {total} / {k} = {each} {item}.",
             f"The friend now has {each} + {more} = {each + more} {item}."]  # fmt: skip
    return q, steps, each + more


def sale_price(rng: random.Random) -> Problem:
    """A percentage discount."""
    pct = rng.choice([10, 20, 25, 50])
    price = rng.randint(2, 30) * (100 // pct)
    thing = rng.choice(["jacket", "lamp", "bike", "backpack", "chair", "game", "watch"])
    off = price * pct // 100
    q = (f"A store sells a {thing} for ${price}. It is on sale for {pct}% off. "
         "What is the sale price?")  # fmt: skip
    steps = [f"The discount is {price} * {pct} / 100 = ${off}.",
             f"The sale price is {price} - {off} = ${price - off}."]  # fmt: skip
    return q, steps, price - off


def ages(rng: random.Random) -> Problem:
    """Times as old, in some years."""
    (n, _), (m, _) = rng.sample(NAMES, 2)
    a, k, y = rng.randint(3, 15), rng.randint(2, 4), rng.randint(2, 20)
    q = (f"{n} is {a} years old. {m} is {k} times as old as {n}. How old will {m} be in "
         f"{y} years?")  # fmt: skip
    steps = [f"{m} is {a} * {k} = {a * k} years old now.",
             f"In {y} years {m} will be {a * k} + {y} = {a * k + y} years old."]  # fmt: skip
    return q, steps, a * k + y


TEMPLATES: list[Callable[[random.Random], Problem]] = [
    half_as_many, hourly_wage, change_back, pages_left,
    weekly_distance, share_equally, sale_price, ages,
]  # fmt: skip


def problem(rng: random.Random) -> dict[str, str]:
    """One record with MetaMathQA's field names."""
    query, steps, answer = rng.choice(TEMPLATES)(rng)
    return {"query": query, "response": " ".join([*steps, f"The answer is: {answer}"])}


def story(rng: random.Random) -> str:
    """A few plain sentences from the same vocabulary (pre-training text, not the task)."""
    (n, p), (m, _) = rng.sample(NAMES, 2)
    a, b = rng.randint(1, 60), rng.randint(1, 60)
    item, place = rng.choice(ITEMS), rng.choice(PLACES)
    verb, day = rng.choice(VERBS), rng.choice(DAYS)
    sentences = [
        f"On {day}, {n} went to the {place} with {m}.",
        f"{p.capitalize()} {verb} {a} {item} there.",
        f"{m} had {b} {item}, so together they had {a + b} {item}.",
        f"They talked about the {rng.choice(PLACES)} and walked home.",
    ]
    return " ".join(sentences[: rng.randint(2, 4)])


def fact(rng: random.Random) -> str:
    """An arithmetic line like those in worked answers."""
    a, b = rng.randint(1, 99), rng.randint(1, 20)
    op = rng.choice(list(OPS))
    if op == "/":
        return f"{a * b} / {b} = {a}."
    return f"{a} {op} {b} = {OPS[op](a, b)}."


def write_jsonl(records: list[dict[str, str]], out: Path) -> None:
    """One JSON object per line, UTF-8."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=DEFAULT)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    write_jsonl([problem(rng) for _ in range(args.n)], args.out)
    print(f"wrote {args.n} problems to {args.out}")


if __name__ == "__main__":
    main()
