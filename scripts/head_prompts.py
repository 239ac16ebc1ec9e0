"""Write the instructions the shipped draft head was trained on (its answers come from
`polyverse train distill`): made-up chat instructions from the templates below, and the first
GSM8K train questions. None of them is a bench prompt.

    python scripts/head_prompts.py OUT.jsonl [GSM8K_TRAIN.jsonl] [QUESTIONS]
"""

import json
import sys
from pathlib import Path

TEMPLATES = [
    "Explain {t} to a beginner.",
    "Give five tips for {a}.",
    "What are the advantages and disadvantages of {t}?",
    "Write a short story about {o}.",
    "Describe how {t} works in simple terms.",
    "Write a poem about {o}.",
    "List the steps to {a}, numbered.",
    "Write a short email to a colleague about {a}.",
    "Summarise the main ideas of {t} in a paragraph.",
    "Why is {t} important? Answer briefly.",
    "Write a Python function that {c}.",
    "Compare {t} and {u}.",
]
TOPICS = ["machine learning", "the water cycle", "compound interest", "blockchain", "climate change", "the immune system",
          "recursion", "supply and demand", "the French Revolution", "black holes", "vaccines", "cloud computing",
          "renewable energy", "the stock market", "meditation", "public transport", "social media", "nuclear power",
          "democracy", "the internet", "gravity", "plate tectonics", "inflation", "version control", "encryption",
          "the Roman Empire", "sleep", "exercise", "electric bikes", "remote work", "open source software",
          "databases", "neural networks", "the printing press", "volcanoes", "coral reefs", "bees", "antibiotics"]
ACTS = ["learning a new language", "saving money", "cooking a healthy dinner", "writing a good resume", "running a marathon",
        "studying for an exam", "starting a small business", "keeping a houseplant alive", "planning a trip",
        "giving a presentation", "reducing stress", "organising a closet", "training a puppy", "making friends in a new city",
        "improving your handwriting", "staying safe online", "preparing for a job interview", "reading more books",
        "setting up a home network", "baking bread"]
OBJS = ["a lighthouse keeper", "a lost robot", "an old library", "a mountain village", "a dragon who is afraid of fire",
        "the first snow of winter", "a city at dawn", "a friendly ghost", "a long train journey", "autumn leaves",
        "a time traveller", "a garden in spring", "the moon", "a small boat in a storm", "a talking tree"]
CODE = ["reverses a string", "checks whether a word is a palindrome", "sorts a list of numbers with bubble sort",
        "counts the vowels in a sentence", "returns the largest number in a list", "merges two sorted lists",
        "computes the factorial of n recursively", "removes duplicates from a list while keeping order",
        "converts Celsius to Fahrenheit", "finds the most common word in a text", "checks whether a year is a leap year",
        "flattens a nested list", "computes the greatest common divisor of two numbers", "reads a CSV file and sums a column"]

T2 = ["What would happen if {t} disappeared overnight?", "Give me a short history of {t}.",
      "Write a dialogue between a teacher and a student about {t}.", "What are common myths about {t}?",
      "How would you explain {t} to a ten-year-old?", "Write a persuasive paragraph in favour of {t}.",
      "What careers are related to {t}?", "Create a quiz with three questions about {t}.",
      "Write a haiku about {t}.", "What are the ethical issues around {t}?"]
TOP2 = ["artificial intelligence", "photosynthesis", "the Olympic Games", "coffee", "chess", "the human brain",
        "electric cars", "the ocean", "jazz music", "urban gardening", "space exploration", "video games",
        "recycling", "the moon landing", "earthquakes", "smartphones", "tea", "libraries", "volunteering",
        "robots", "rainforests", "3D printing", "the Renaissance", "wind power", "honey bees", "DNA",
        "mathematics", "poetry", "the Great Wall of China", "quantum computers"]
A2 = ["Plan a three-day itinerary for {p}.", "Write a product description for {o}.", "Suggest a name and slogan for {o}.",
      "Write a thank-you note to {w}.", "Give advice to someone who is {s}.", "Rewrite this sentence more formally: '{f}'",
      "Translate into simple English: '{f}'", "Write a recipe for {d}."]
P2 = ["Paris", "Tokyo", "a national park", "a small coastal town", "New York", "the Scottish Highlands"]
O2 = ["a reusable water bottle", "a solar-powered lamp", "a language-learning app", "a bakery", "a bike repair shop",
      "a smart alarm clock"]
W2 = ["a neighbour who helped you move", "a teacher", "a friend who gave you a gift", "a mentor", "a nurse"]
S2 = ["nervous about a first job", "moving to a new country", "learning to code", "feeling unmotivated",
      "training for a 5k run", "starting university"]
F2 = ["hey can u send me the report asap", "the meeting got moved cuz the boss is sick", "we gotta fix this bug before friday",
      "thx for the help yesterday it was awesome", "i dunno if the plan will work tbh"]
D2 = ["pancakes", "a vegetable soup", "chocolate chip cookies", "a simple curry", "guacamole", "lemonade"]


def instructions() -> list[str]:
    out = []
    for t in TEMPLATES:
        if "{c}" in t:
            out += [t.format(c=c) for c in CODE]
        elif "{o}" in t:
            out += [t.format(o=o) for o in OBJS]
        elif "{a}" in t:
            out += [t.format(a=a) for a in ACTS]
        elif "{u}" in t:
            out += [t.format(t=x, u=y) for x, y in zip(TOPICS[::2], TOPICS[1::2])]
        else:
            out += [t.format(t=x) for x in TOPICS]
    for t in T2:
        out += [t.format(t=x) for x in TOP2]
    fill = dict(p=P2, o=O2, w=W2, s=S2, f=F2, d=D2)
    for t in A2:
        key = t[t.index("{") + 1]
        out += [t.format(**{key: x}) for x in fill[key]]
    return out


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    gsm8k = Path(sys.argv[2] if len(sys.argv) > 2 else Path(__file__).resolve().parents[2] / "shared/data/gsm8k_train.jsonl")
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 250
    rows = [{"id": f"i{n}", "prompt": p} for n, p in enumerate(instructions())]
    with gsm8k.open(encoding="utf-8") as f:
        for n, line in zip(range(count), f):
            rows.append({"id": f"g{n}", "prompt": json.loads(line)["question"]})
    Path(sys.argv[1]).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} prompts -> {sys.argv[1]}")


if __name__ == "__main__":
    main()
