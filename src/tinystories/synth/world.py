"""The small world the procedural engine tells stories about: names, kinds, places, things, facts.

Kept apart from the engine so the probes can build contexts from the same world.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


def _words(text: str) -> list[str]:
    return text.split()


# Names real TinyStories use often: each reads at low cost to a small model trained on the real
# stories (llama2.c's stories260K), where rarer names (Noah, Kevin, Ivy) cost it two to three times
# as much. Lily, Timmy, Tim, Tom, Max and Ben name a third of the real stories.
GIRL_NAMES = _words(
    "Lily Amy Lucy Sue Mia Sally Anna Emma Lila Daisy Kitty Jane Jenny Lola Poppy Sara Jill Molly Mary "
    "Ann Pip Mimi Rosie Ella Bella"
)
BOY_NAMES = _words(
    "Tim Timmy Tom Jack Max Teddy Benny Tommy Sam Bob Spot Toby Billy Ben Joe Jimmy Buddy Bobby Fred "
    "Mark Zack Ted Charlie Leo"
)


def pick_name(rng: random.Random, gender: str, avoid: str = "") -> str:
    """A name of this gender; never `avoid` nor one that starts it or that it starts ("Tim", "Timmy")."""
    names = [
        n for n in (GIRL_NAMES if gender == "female" else BOY_NAMES)
        if not avoid or not (n.startswith(avoid) or avoid.startswith(n))
    ]
    return rng.choice(names)

# Kinds a named character can be; the gender of girl/boy is fixed, animals get either.
CHILD_KINDS = {"girl": "female", "boy": "male"}
ANIMAL_KINDS = _words(
    "dog cat bunny bird bear mouse fox duck frog puppy kitten squirrel owl pig lion monkey turtle horse "
    "rabbit hen"
)

PLACES = _words("park garden beach forest yard playground farm lake meadow backyard hill pond field woods river zoo")
INDOOR = _words("house kitchen bedroom room attic classroom library")
HIGH_SPOTS = ("tall tree", "roof", "high fence", "big bush", "tall pole")
HIDING_SPOTS = (
    "under the bed",
    "behind the sofa",
    "in the tall grass",
    "under a big leaf",
    "in the toy box",
    "behind a rock",
    "under the table",
    "next to the door",
    "under the chair",
    "behind the big tree",
    "under a pile of leaves",
    "in the sandbox",
    "near the swings",
)
TOOLS = ("long stick", "ladder", "big box to stand on", "chair")

# Things a goal can be about when the item's noun is not a thing one can hold.
GOAL_OBJECTS = _words(
    "ball kite hat doll teddy balloon book box toy drum car boat shell crayon cup scarf bucket blanket "
    "truck robot puzzle"
)
COLORS = _words("red blue green yellow orange purple pink brown black white gray")
SIZES = _words("big small little tiny")

# Noun classes a child can hold, lose, fix or carry.
HOLDABLE = {"toy", "object", "food", "clothing", "vehicle"}
COLLECTIBLE = set(
    _words("stone stick shell feather leaf flower seed acorn pinecone pebble rock petal twig snowflake")
)
# Things of those classes that stay where they are (a bridge, a bed): never the plot's thing.
FIXED = set(
    _words(
        "bridge fence gate wall roof step sign tower fountain statue bench oven fridge sink sofa couch cupboard "
        "shelf carpet rug bath door window bed table"
    )
)
# Nouns of those classes with lines of their own (templates.NOUN_SLOT), never the plot's thing either.
OWN_LINES = set(_words("story song pocket"))
WEATHER = set(_words("rain snow wind storm thunder lightning fog"))
# A family noun becomes the parent, called by that very word ("her grandma").
FAMILY = {
    "mom": "female",
    "mommy": "female",
    "mother": "female",
    "grandma": "female",
    "grandmother": "female",
    "dad": "male",
    "daddy": "male",
    "father": "male",
    "grandpa": "male",
    "grandfather": "male",
}
ANIMAL_ONLY_BODY = {"tail": "dog", "paw": "dog", "wing": "bird", "beak": "bird"}
MASS = set(
    _words(
        "milk juice honey jam butter cereal rice pasta soup bread cheese water sand mud grass snow rain ice "
        "fire dirt hay dust sunshine fog thunder lightning weather money paper chalk paint soap tape glue "
        "food candy popcorn chocolate tea sugar meat salad yogurt string rope sauce toast lunch breakfast "
        "dinner light wind"
    )
)

# Facts the corpus states, always the same way ("The sky was blue."), for fact probes.
COLOR_FACTS = {
    "sky": "blue",
    "grass": "green",
    "snow": "white",
    "sun": "yellow",
    "banana": "yellow",
    "carrot": "orange",
    "strawberry": "red",
    "milk": "white",
    "frog": "green",
    "pumpkin": "orange",
    "cloud": "white",
    "lemon": "yellow",
    "chocolate": "brown",
    "mud": "brown",
    "tomato": "red",
    "night": "black",
}

# State -> what a character in that state needs; used for cause-and-effect in stories and probes.
NEEDS = {
    "cold": ("a warm coat", "put on a warm coat"),
    "hungry": ("a big sandwich", "ate a big sandwich"),
    "thirsty": ("a cup of water", "drank a cup of water"),
    "sleepy": ("a soft pillow", "took a long nap"),
    "wet": ("a dry towel", "dried off with a towel"),
    "sad": ("a big hug", "got a big hug"),
}
# Toys two children can each have, and things a child can wish for (possession and choice scenes, probes).
TOYS = ("ball", "kite", "doll", "drum", "boat", "truck", "hat", "book", "robot", "puzzle", "balloon", "teddy")
WISHES = ("cat", "dog", "bike", "kite", "puppy", "doll", "drum", "bunny", "ball", "train", "boat", "fish")
FRAGILE = ("egg", "plate", "vase", "cookie", "mug", "bowl", "mirror", "window")
STURDY = ("pillow", "teddy", "sock", "ball", "blanket", "hat", "rope", "towel")


@dataclass
class Character:
    """A story character; pronouns follow `gender`."""

    name: str
    kind: str
    gender: str  # "female" | "male"
    role: str = ""

    @property
    def he(self) -> str:
        return "she" if self.gender == "female" else "he"

    @property
    def He(self) -> str:  # capitalised, for the start of a sentence
        return self.he.capitalize()

    @property
    def him(self) -> str:
        return "her" if self.gender == "female" else "him"

    @property
    def his(self) -> str:
        return "her" if self.gender == "female" else "his"

    @property
    def His(self) -> str:
        return self.his.capitalize()

    @property
    def himself(self) -> str:
        return "herself" if self.gender == "female" else "himself"


def article(phrase: str) -> str:
    """'a' or 'an' for the phrase that follows."""
    w = phrase.lower()
    if w.startswith(("uni", "use", "eu", "one")):
        return "a"
    if w.startswith(("hour", "honest")):
        return "an"
    return "an" if w[:1] in "aeiou" else "a"


def a(phrase: str) -> str:
    """'a ball', 'an apple'."""
    return f"{article(phrase)} {phrase}"
