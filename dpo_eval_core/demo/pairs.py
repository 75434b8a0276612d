"""Deterministic demo preference pairs written for this project.

Chosen answers are direct and concise: the facts, in plain declarative sentences.
Rejected answers carry the same facts wrapped in hedging, filler, self-reference and
repetition. The difference is stylistic and learnable, and TextDescriptives sees it
(length, repetition, pronoun share, readability), which is what the demo needs.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

# (subject, three facts). Facts are short sentences a small model can echo.
TOPICS: tuple[tuple[str, tuple[str, str, str]], ...] = (
    ("photosynthesis", ("Plants turn light, water and carbon dioxide into sugar and oxygen.",
                        "It happens in the chloroplasts of leaf cells.", "Chlorophyll absorbs mostly red and blue light.")),
    ("the water cycle", ("Water evaporates from seas and lakes, condenses into clouds and falls as rain or snow.",
                         "The sun's heat drives evaporation.", "Rivers and groundwater carry the water back to the sea.")),
    ("a black hole", ("A black hole is a region where gravity is so strong that not even light escapes.",
                      "Many form when a massive star collapses.", "Its boundary is called the event horizon.")),
    ("inflation", ("Inflation is a general rise in prices that lowers what money can buy.",
                   "Central banks often raise interest rates to slow it.", "A small steady rate is usually seen as healthy.")),
    ("the French Revolution", ("The French Revolution began in 1789 and ended the absolute monarchy in France.",
                               "It spread ideas of citizenship and equal rights.", "It was followed by the rise of Napoleon.")),
    ("vaccines", ("A vaccine trains the immune system to recognise a germ without causing the disease.",
                  "It usually contains a weakened, inactivated or partial form of the germ.", "Memory cells then respond quickly to a real infection.")),
    ("compound interest", ("Compound interest is interest earned on both the deposit and the interest already added.",
                           "Savings grow faster the longer they stay invested.", "Doubling time is roughly 72 divided by the yearly rate.")),
    ("plate tectonics", ("The Earth's crust is split into plates that move a few centimetres a year.",
                         "Earthquakes and volcanoes cluster along plate edges.", "Mountain ranges rise where plates collide.")),
    ("the immune system", ("The immune system defends the body against germs and damaged cells.",
                           "White blood cells find and destroy invaders.", "Antibodies tag specific targets for removal.")),
    ("a recursive function", ("A recursive function solves a problem by calling itself on smaller inputs.",
                              "It needs a base case that stops the calls.", "Factorial and tree traversal are classic examples.")),
    ("a hash table", ("A hash table stores values under keys and finds them in constant time on average.",
                      "A hash function maps each key to a slot.", "Collisions are handled by chaining or probing.")),
    ("version control", ("Version control records every change to a set of files.",
                         "It lets a team work in parallel and merge their changes.", "Git is the most widely used system.")),
    ("the Roman Empire", ("The Roman Empire ruled the Mediterranean world for about five centuries.",
                          "Its roads, laws and Latin language shaped Europe.", "The western half fell in 476.")),
    ("climate change", ("Climate change is the long-term warming of the planet caused mainly by greenhouse gases.",
                        "Burning coal, oil and gas releases most of them.", "It raises sea levels and makes heat waves more frequent.")),
    ("the heart", ("The heart is a muscle that pumps blood through the body.",
                   "It has four chambers: two atria and two ventricles.", "An adult heart beats about seventy times a minute.")),
    ("supply and demand", ("Prices rise when demand exceeds supply and fall when supply exceeds demand.",
                           "The market settles where the two meet.", "Shortages and surpluses push prices toward that point.")),
    ("the moon's phases", ("The moon's phases come from how much of its sunlit side faces the Earth.",
                           "A full cycle takes about twenty-nine days.", "The moon does not make its own light.")),
    ("electric circuits", ("An electric circuit is a closed loop through which current flows.",
                           "A battery provides the voltage that pushes the current.", "Resistors limit the current in the loop.")),
    ("the printing press", ("Johannes Gutenberg built a printing press with movable type around 1440.",
                            "Books became cheaper and far more common.", "It helped spread literacy and new ideas across Europe.")),
    ("DNA", ("DNA is the molecule that carries genetic instructions in living things.",
             "It is a double helix made of four bases.", "Genes are stretches of DNA that code for proteins.")),
    ("sleep", ("Sleep lets the body repair itself and the brain store memories.",
               "Adults need about seven to nine hours a night.", "Regular bedtimes improve sleep quality.")),
    ("a budget", ("A budget is a plan for how to spend and save money over a period.",
                  "It lists expected income and expenses.", "Tracking spending shows where to cut back.")),
    ("gravity", ("Gravity is the force that pulls masses toward each other.",
                 "It keeps the planets in orbit around the sun.", "On Earth it accelerates falling objects at about 9.8 metres per second squared.")),
    ("the internet", ("The internet is a global network of computers that exchange data using shared protocols.",
                      "Data travels in small packets that find their own routes.", "The web is one service that runs on it.")),
    ("machine learning", ("Machine learning builds models that learn patterns from data instead of following fixed rules.",
                          "A model is trained on examples and tested on new ones.", "Overfitting happens when it memorises the training data.")),
    ("the stock market", ("The stock market is where shares of companies are bought and sold.",
                          "Prices move with expectations of future profits.", "Diversifying lowers the risk of any one company failing.")),
    ("volcanoes", ("A volcano is an opening in the crust where molten rock reaches the surface.",
                   "Pressure from gas and magma causes eruptions.", "Volcanic ash makes nearby soil very fertile.")),
    ("the Renaissance", ("The Renaissance was a revival of art and learning in Europe from the fourteenth century.",
                         "It began in Italian cities such as Florence.", "Leonardo da Vinci and Michelangelo are among its best-known artists.")),
    ("antibiotics", ("Antibiotics are medicines that kill bacteria or stop them from growing.",
                     "They do not work against viruses.", "Overuse lets resistant bacteria spread.")),
    ("renewable energy", ("Renewable energy comes from sources that refill naturally, such as sun, wind and water.",
                          "It produces little greenhouse gas once built.", "Storage is needed because sun and wind vary.")),
    ("a sorting algorithm", ("A sorting algorithm puts items in order.",
                             "Merge sort and quicksort run in about n log n time.", "Insertion sort is fast for small or nearly sorted lists.")),
    ("encryption", ("Encryption scrambles data so only someone with the key can read it.",
                    "Public-key systems use one key to lock and another to unlock.", "It protects messages, passwords and payments.")),
    ("the digestive system", ("The digestive system breaks food into nutrients the body can absorb.",
                              "Digestion starts in the mouth and continues in the stomach.", "Most nutrients are absorbed in the small intestine.")),
    ("earthquakes", ("An earthquake is a sudden shaking of the ground caused by rocks slipping along a fault.",
                     "Its size is measured on the moment magnitude scale.", "Most happen near the edges of tectonic plates.")),
    ("the scientific method", ("The scientific method tests ideas against evidence.",
                               "A hypothesis makes a prediction that an experiment can check.", "Results must be repeatable by others.")),
    ("democracy", ("Democracy is a system in which citizens choose their government by voting.",
                   "Free elections and a free press are central to it.", "Power is limited by law and by the courts.")),
    ("the rainforest", ("Rainforests are dense forests with heavy rainfall all year.",
                        "They hold more than half of the world's plant and animal species.", "Clearing them releases stored carbon.")),
    ("bread making", ("Bread is made from flour, water, salt and yeast.",
                      "Yeast produces gas that makes the dough rise.", "Kneading builds gluten, which gives bread its structure.")),
    ("the solar system", ("The solar system is the sun and everything that orbits it.",
                          "It has eight planets, from Mercury to Neptune.", "Jupiter is the largest planet.")),
    ("muscles", ("Muscles move the body by contracting and relaxing.",
                 "Skeletal muscles are attached to bones by tendons.", "Regular exercise makes them stronger.")),
    ("a database index", ("A database index is a structure that speeds up lookups on a column.",
                          "Most indexes are B-trees.", "Indexes make writes slower and use extra space.")),
    ("the Industrial Revolution", ("The Industrial Revolution moved production from hand tools to machines, starting in Britain around 1760.",
                                   "Steam engines powered factories and railways.", "People moved from farms to growing cities.")),
    ("ocean tides", ("Tides are the regular rise and fall of the sea.",
                     "They are caused mainly by the moon's gravity.", "Most coasts have two high tides a day.")),
    ("probability", ("Probability measures how likely an event is, from zero to one.",
                     "A fair coin lands heads with probability one half.", "Independent events multiply their probabilities.")),
    ("recycling", ("Recycling turns used materials into new products.",
                   "It saves energy and raw materials.", "Sorting waste correctly keeps recycling streams clean.")),
    ("the nervous system", ("The nervous system carries signals between the brain and the body.",
                            "Neurons pass messages with electrical and chemical signals.", "The spinal cord links the brain to most nerves.")),
    ("unit testing", ("A unit test checks one small piece of code in isolation.",
                      "Good tests are fast and repeatable.", "They catch regressions when the code changes.")),
    ("coffee", ("Coffee is made from the roasted seeds of the coffee plant.",
                "Its caffeine is a mild stimulant.", "Brazil is the largest producer.")),
    ("the Great Wall of China", ("The Great Wall of China is a series of walls built over many centuries to defend northern China.",
                                 "Most of what stands today dates from the Ming dynasty.", "It stretches for thousands of kilometres.")),
    ("rainbows", ("A rainbow appears when sunlight is bent and reflected inside raindrops.",
                  "Each colour bends by a slightly different amount.", "You see one with the sun behind you.")),
    ("interest rates", ("An interest rate is the price of borrowing money.",
                        "Higher rates make loans more expensive and saving more attractive.", "Central banks set a base rate that guides the others.")),
    ("bees", ("Bees collect nectar and pollen from flowers.",
              "They pollinate many of the crops people eat.", "A honeybee colony has one queen and thousands of workers.")),
    ("a compiler", ("A compiler translates source code into machine code before the program runs.",
                    "It checks the code for errors along the way.", "An interpreter instead runs the code line by line.")),
    ("glaciers", ("A glacier is a large mass of ice that moves slowly over land.",
                  "It forms where more snow falls than melts.", "Glaciers carve valleys and carry rocks far from their source.")),
    ("memory in computers", ("Computer memory holds the data a program is working on.",
                             "RAM is fast but loses its contents when the power is off.", "Disks are slower but keep data permanently.")),
    ("the Olympic Games", ("The Olympic Games are an international sports event held every four years.",
                           "The modern games began in Athens in 1896.", "Summer and winter games alternate every two years.")),
    ("friction", ("Friction is the force that resists sliding between two surfaces.",
                  "Rough surfaces produce more friction than smooth ones.", "It turns motion into heat.")),
    ("photosynthetic algae", ("Algae are simple organisms that make food from sunlight.",
                              "They produce a large share of the oxygen in the air.", "Some grow into huge blooms in warm, nutrient-rich water.")),
    ("public speaking", ("Good public speaking starts with a clear main point.",
                         "Practice lowers nerves and improves timing.", "Short sentences and pauses help listeners follow.")),
    ("first aid for a burn", ("Cool a minor burn under running water for about twenty minutes.",
                              "Cover it loosely with a clean, non-fluffy dressing.", "Get medical help for large, deep or facial burns.")),
)

QUESTIONS: tuple[str, ...] = (
    "What is {s}?",
    "Can you explain {s} briefly?",
    "Give me a short overview of {s}.",
    "How would you describe {s} to a beginner?",
    "Tell me the key facts about {s}.",
    "Why does {s} matter?",
)

SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are a knowledgeable tutor. Answer the student's question.",
)

_OPENERS = (
    "Oh wow, that's a really great question, and honestly I'm so glad you asked me about it!",
    "Hmm, well, okay, so I think I can maybe try to answer that, although I'm not totally sure.",
    "Great question!!! I love talking about this kind of stuff, so let me just ramble a bit.",
    "Okay so, um, I guess I would say that there are a lot of things to say here, really.",
)
_HEDGES = (
    "I think that maybe", "As far as I know, and I could be wrong, but basically", "So, like, I believe",
    "If I remember correctly, which I might not,", "You know, I'm pretty sure that",
)
_FILLERS = (
    "I mean, it's kind of complicated, you know, and there's a lot going on with it.",
    "Anyway, I could go on and on about this forever, honestly, because it's just so interesting to me.",
    "Basically, like I said, it's a really big topic and I'm just scratching the surface here.",
    "But yeah, that's sort of the general idea, I think, more or less, in a way.",
)
_CLOSERS = (
    "I hope this helps a little bit, and please let me know if you have any more questions because I'd love to chat more!",
    "Anyway, that's just my take on it, so maybe double-check somewhere else too, okay?",
    "So yeah, I really hope that kind of answers your question, sort of, at least partly!!",
)


def _lower_first(sentence: str) -> str:
    return sentence[0].lower() + sentence[1:] if sentence[:2] != sentence[:2].upper() else sentence


def _chosen(facts: tuple[str, str, str], rng: random.Random) -> str:
    order = [0] + rng.sample([1, 2], 2)
    return " ".join(facts[i] for i in order)


def _rejected(subject: str, facts: tuple[str, str, str], rng: random.Random) -> str:
    first = _lower_first(facts[0]).rstrip(".")
    parts = [
        rng.choice(_OPENERS),
        f"{rng.choice(_HEDGES)} {first}, or something along those lines.",
        rng.choice(_FILLERS),
        f"Also, {_lower_first(facts[rng.choice([1, 2])])}",
        f"And like I said before, {first}, which is really the main thing about {subject}.",
        rng.choice(_CLOSERS),
    ]
    return " ".join(parts)


def demo_pairs(seed: int = 0) -> list[dict[str, str]]:
    """All demo pairs (at least 300): system, prompt, chosen, rejected. Deterministic in seed."""
    rows = []
    for subject, facts in TOPICS:
        for qi, question in enumerate(QUESTIONS):
            key = f"{seed}:{subject}:{qi}"
            rng = random.Random(hashlib.sha256(key.encode()).hexdigest())
            rows.append({
                "system": SYSTEM_PROMPTS[qi % len(SYSTEM_PROMPTS)],
                "prompt": question.format(s=subject),
                "chosen": _chosen(facts, rng),
                "rejected": _rejected(subject, facts, rng),
            })
    return rows


def write_demo_pairs(path: Path, seed: int = 0) -> Path:
    """Write the demo pairs as JSON Lines (the format users bring); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in demo_pairs(seed):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
