"""Writes assets/chat_example.jsonl and assets/alpaca_example.jsonl (deterministic; run from the repo root).

The data is written for this project: a support assistant for "Lumen Home", a fictional maker of a
smart kettle, a desk lamp and a home hub, plus short factual questions (capitals, unit conversions,
arithmetic) whose answers are computed here, so they are right.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "You are Lumi, the friendly support assistant for Lumen Home products. Answer briefly and precisely."

PRODUCTS = {
    "Lumen Kettle K2": {
        "reset": "Unplug the kettle base, wait ten seconds, then hold the power button for five seconds until the ring flashes blue.",
        "pair": "Open the Lumen app, tap Add device, choose Kettle K2, and hold the kettle's power button until the ring pulses white.",
        "clean": "Fill it with equal parts water and white vinegar, boil once, let it stand for 30 minutes, then rinse twice with clean water.",
        "light": "A red ring means the kettle is empty or was lifted while heating. Refill it above the MIN line and press start again.",
        "warranty": "The Kettle K2 has a two-year warranty covering the heating element and the base.",
        "spec": "It holds 1.7 litres, heats at 2200 watts, and can keep water at 40, 60, 80 or 95 degrees Celsius.",
    },
    "Lumen Desk Lamp L1": {
        "reset": "Hold the touch strip for twelve seconds; the lamp blinks three times when the reset is done.",
        "pair": "In the Lumen app tap Add device, choose Desk Lamp L1, then tap the touch strip five times quickly.",
        "clean": "Wipe the shade and arm with a dry microfibre cloth. Do not use sprays on the touch strip.",
        "light": "A slow orange blink means the lamp lost its Wi-Fi connection. It reconnects on its own within two minutes.",
        "warranty": "The Desk Lamp L1 has a three-year warranty, including the LED panel.",
        "spec": "It gives up to 800 lumens, with colour temperatures from 2700 K to 6500 K and a USB-C charging port in the base.",
    },
    "Lumen Hub H3": {
        "reset": "Press the pinhole button on the back with a paperclip for fifteen seconds until the top light turns purple.",
        "pair": "Plug the hub into your router with the included cable, then scan the QR code under the hub with the Lumen app.",
        "clean": "Dust the vents with a soft brush. Keep the hub out of direct sunlight and away from water.",
        "light": "A steady yellow light means the hub has no internet connection. Check the router cable and restart the router.",
        "warranty": "The Hub H3 has a two-year warranty, extendable to four years with Lumen Care.",
        "spec": "It connects up to 64 devices over Wi-Fi, Zigbee and Thread, and keeps automations running offline.",
    },
}

QUESTIONS = {
    "reset": ["How do I reset my {p}?", "My {p} is stuck. How can I do a factory reset?", "What's the reset procedure for the {p}?"],
    "pair": ["How do I connect the {p} to the app?", "The app can't find my {p}. How do I pair it?", "How do I set up a new {p}?"],
    "clean": ["How should I clean the {p}?", "What's the best way to keep my {p} clean?"],
    "light": ["What does the warning light on my {p} mean?", "My {p} is blinking. What is wrong?"],
    "warranty": ["What warranty does the {p} have?", "Is my {p} still under warranty after eighteen months?"],
    "spec": ["What are the specs of the {p}?", "Tell me the main features of the {p}."],
}

FOLLOW_UPS = {
    "reset": [("Thanks! Will I lose my settings?", "Yes, a reset clears Wi-Fi details and schedules. You will need to pair the device again in the Lumen app."),
              ("Can I do that from my phone instead?", "Not for a reset: it needs the physical button, so nobody can reset the device remotely.")],
    "warranty": [("Where do I find the serial number?", "It is printed on the label under the device and also shown in the Lumen app under Device info.")],
    "pair": [("It still doesn't show up.", "Make sure your phone is on a 2.4 GHz Wi-Fi network and Bluetooth is on, then try again within one metre of the device.")],
}
GENERIC_FOLLOW_UP = ("That worked, thank you.", "Glad it helped! Is there anything else I can do for you?")

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "Canada": "Ottawa", "Australia": "Canberra", "Brazil": "Brasília", "Egypt": "Cairo",
    "Kenya": "Nairobi", "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw", "Greece": "Athens",
    "Argentina": "Buenos Aires", "Mexico": "Mexico City", "India": "New Delhi", "Ireland": "Dublin",
    "Austria": "Vienna", "Finland": "Helsinki", "Chile": "Santiago", "Peru": "Lima", "Vietnam": "Hanoi",
    "Thailand": "Bangkok", "Turkey": "Ankara", "Morocco": "Rabat", "Netherlands": "Amsterdam",
    "Switzerland": "Bern", "New Zealand": "Wellington",
}


def support_pairs(rng: random.Random) -> list[tuple[str, str, str]]:
    pairs = []
    for product, answers in PRODUCTS.items():
        for topic, templates in QUESTIONS.items():
            for t in templates:
                answer = answers[topic]
                if topic == "warranty" and "eighteen" in t:
                    years = answer.split(" has a ")[1].split("-year")[0]
                    answer = f"Yes. {answer} Eighteen months is within the {years}-year period."
                pairs.append((t.format(p=product), answer, topic))
    rng.shuffle(pairs)
    return pairs


def fact_pairs(rng: random.Random) -> list[tuple[str, str]]:
    pairs = [(f"What is the capital of {c}?", f"The capital of {c} is {cap}.") for c, cap in CAPITALS.items()]
    for _ in range(60):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        sign = {"+": "plus", "-": "minus", "*": "times"}[op]
        pairs.append((f"What is {a} {sign} {b}?", f"{a} {sign} {b} is {value}."))
    for _ in range(40):
        km = rng.randint(1, 200)
        pairs.append((f"How many miles is {km} km?", f"{km} km is about {km * 0.621371:.1f} miles."))
    for _ in range(40):
        c = rng.randint(-20, 100)
        pairs.append((f"Convert {c} degrees Celsius to Fahrenheit.", f"{c} °C is {c * 9 / 5 + 32:g} °F."))
    rng.shuffle(pairs)
    return pairs


def chat_records(rng: random.Random) -> list[dict]:
    records = []
    for i, (q, a, topic) in enumerate(support_pairs(rng) * 3):
        messages = [{"role": "system", "content": SYSTEM}] if i % 3 else []
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 4 == 0:
            options = FOLLOW_UPS.get(topic, [GENERIC_FOLLOW_UP])
            fq, fa = options[i % len(options)]
            messages += [{"role": "user", "content": fq}, {"role": "assistant", "content": fa}]
        records.append({"messages": messages})
        if len(records) >= 150:
            break
    for q, a in fact_pairs(rng)[:150]:
        records.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    rng.shuffle(records)
    return records


def alpaca_records(rng: random.Random) -> list[dict]:
    records = []
    for q, a, _topic in support_pairs(rng)[:100]:
        records.append({"instruction": q, "input": "", "output": a, "system": SYSTEM})
    for product, answers in PRODUCTS.items():
        for topic, answer in answers.items():
            records.append({"instruction": f"Summarise this {product} support note in one short sentence.",
                            "input": answer, "output": answer.split(". ")[0].rstrip(".") + "."})
    for q, a in fact_pairs(rng)[:180]:
        records.append({"instruction": q, "input": "", "output": a})
    rng.shuffle(records)
    return records


def main() -> None:
    here = Path(__file__).resolve().parent
    rng = random.Random(20261127)
    for name, records in (("chat_example.jsonl", chat_records(rng)), ("alpaca_example.jsonl", alpaca_records(rng))):
        path = here / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        print(f"{path}: {len(records)} records, {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
