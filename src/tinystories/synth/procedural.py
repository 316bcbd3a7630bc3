"""Offline story engine: plans a small plot in a small world, then tells it in simple English.

For item i of a job (seed, i) picks the three words and features exactly as an
LLM prompt would (`lexicon.sample_item`), builds a world (a protagonist, a
friend, a parent, a place, a thing with a color and an owner), chooses a goal,
an obstacle and a resolution (or, with BadEnding, a failure), adds what each
feature means for the plot, and realises every event with one of several
one-sentence templates (`templates.py`). The three words go where their class fits (a toy becomes the thing
the plot is about, an animal becomes the friend, a feeling is how someone
feels, ...).

Every record carries `annotations`: the characters with the offset of their
first mention, the protagonist, the objects and the facts the story states,
the plot skeleton (event types in order), and which sentences realise each
feature.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from tinystories.data.instruct import sentences
from tinystories.synth import world as W
from tinystories.synth.lexicon import Lexicon, item_rng, load_lexicon, sample_item
from tinystories.synth.prompts import story_prompt
from tinystories.synth.templates import (
    ADJ_SLOT,
    CONFLICT,
    CONFLICT_BAD,
    CONFLICT_GOOD,
    FAIL,
    FOODS,
    FRIEND_INTRO,
    GAMES,
    GOAL_REPLY,
    GOAL_TALK,
    GOALS_T,
    HAPPY_END,
    HAPPY_TALK,
    HELP,
    HELP_TALK,
    HELP_THANKS,
    IDEA,
    INTRO,
    MORAL,
    NOUN_SLOT,
    OBJ_INTRO,
    OBSTACLE,
    OBSTACLE_TALK,
    PAYOFF,
    PLAY,
    RESOLVE,
    RETRIEVE,
    SAD_END,
    SAD_TALK,
    SETUP,
    SNACK,
    TWIST,
    TWIST_BAD,
    VERB_END_I,
    VERB_END_T,
    VERB_END_T_NO_OBJ,
    VERB_HABIT_I,
    VERB_HABIT_T,
    WALK,
    WALK_SEE,
)
from tinystories.synth.world import Character, a

OBJECT_ADJ = {"color", "pattern", "size", "shape", "texture", "material", "quality", "age"}
GOALS = ("find", "reach", "fix", "visit", "learn")


def _pick(rng: random.Random, options: list[str] | tuple[str, ...], w: dict[str, str]) -> str:
    return rng.choice(options).format(**w)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class _Teller:
    """Collects sentences into paragraphs and remembers what each one is for."""

    def __init__(self, characters: list[Character], rng: random.Random | None = None):
        self.paras: list[list[str]] = [[]]
        self.labels: list[str] = []  # the event each sentence tells ("talk" for a quoted line)
        self.rng = rng
        self.last_subject = ""  # who the previous narrative sentence was about
        self.n = 0
        self.length = 0  # characters of text so far, for mention offsets
        self.features: dict[str, list[int]] = {}
        self.events: list[str] = []
        self.first: dict[str, int] = {}
        self.characters = characters
        self.previous = ""

    def event(self, name: str) -> None:
        self.events.append(name)
        self.current = name

    def para(self) -> None:
        if self.paras[-1]:
            self.paras.append([])
            self.length += 1  # the "\n" between paragraphs

    def say(self, text: str, *features: str) -> None:
        spoken = '"' in text  # '"Oh no!" Tim said.' splits in two; neither piece changes
        for piece in sentences(_cap(text)):
            self._say(piece if spoken else self._pronoun_subject(piece), features)

    def _say(self, text: str, features: tuple[str, ...]) -> None:
        para = self.paras[-1]
        start = self.length + (1 if para else 0)
        for c in self.characters:
            if c.name not in self.first and c.name.lower() in text.lower():
                # The parent is "her mom" in the narration, "Mom" when spoken to.
                flags = re.IGNORECASE if c.role == "parent" else 0
                m = re.search(rf"\b{re.escape(c.name)}\b", text, flags)
                if m:
                    self.first[c.name] = start + m.start()
        para.append(text)
        self.length = start + len(text)
        tags = set(features)
        if '"' in text:
            tags.add("Dialogue")
        for f in tags:
            self.features.setdefault(f, []).append(self.n)
        self.labels.append("talk" if '"' in text else getattr(self, "current", ""))
        self.n += 1

    def _pronoun_subject(self, text: str) -> str:
        # As in real stories, a sentence about the same character as the one before often starts
        # with "She"/"He" instead of the name, unless another character of that gender was just named.
        hero, others = self.characters[0], self.characters[1:]
        starts = text.startswith(hero.name + " ") and not text.startswith(hero.name + " and ")
        subject = hero.name if starts or re.match(rf"(?:Then |So |Soon )?(?:{hero.name}|{hero.He}) (?!and )", text) else ""
        if (
            starts
            and self.rng is not None
            and self.last_subject == hero.name
            and hero.name in self.first
            and not any(o.gender == hero.gender and o.name.lower() in self.previous.lower() for o in others)
            and self.rng.random() < PRONOUN_P
        ):
            text = hero.He + text[len(hero.name) :]
        if '"' not in text:
            self.last_subject = subject
            self.previous = text
        return text

    def text(self) -> str:
        return "\n".join(" ".join(p) for p in self.paras if p)


def _plan_world(rng: random.Random, words: list[str], lex: Lexicon) -> dict[str, Any]:
    verb, noun, adj = words
    ve, ne, ae = lex.get(verb, "verb"), lex.get(noun, "noun"), lex.get(adj, "adjective")
    vcls = ve.cls if ve else "transitive"
    ncls = ne.cls if ne else "object"
    acls = ae.cls if ae else "quality"
    plural = ne.forms[0] if ne and ne.forms else noun + "s"
    vforms = ve.forms if ve and len(ve.forms) == 3 else (verb + "s", verb + "ed", verb + "ing")

    # Protagonist: a child most of the time, an animal otherwise (as in TinyStories).
    if noun in W.ANIMAL_ONLY_BODY:
        kind = W.ANIMAL_ONLY_BODY[noun]
    elif rng.random() < 0.6:
        kind = rng.choice(list(W.CHILD_KINDS))
    else:
        kind = rng.choice(W.ANIMAL_KINDS)
    gender = W.CHILD_KINDS.get(kind) or rng.choice(("female", "male"))
    name = W.pick_name(rng, gender)
    hero = Character(name, kind, gender, "protagonist")

    fkind = noun if ncls == "animal" else rng.choice(list(W.CHILD_KINDS) + list(W.ANIMAL_KINDS[:8]))
    fgender = W.CHILD_KINDS.get(fkind) or rng.choice(("female", "male"))
    fname = W.pick_name(rng, fgender, avoid=name)
    friend = Character(fname, fkind, fgender, "friend")

    if noun in W.FAMILY:
        pname, pgender = noun.capitalize(), W.FAMILY[noun]
    else:
        pname, pgender = rng.choice((("Mom", "female"), ("Dad", "male")))
    parent = Character(pname, pname.lower(), pgender, "parent")

    place = noun if ncls == "place" else rng.choice(W.PLACES)
    holdable = (ncls in W.HOLDABLE and noun not in W.FIXED and noun not in W.OWN_LINES) or noun in W.COLLECTIBLE
    food = ncls == "food" and holdable
    obj = noun if holdable else rng.choice(W.GOAL_OBJECTS)
    if obj == noun:
        objs = plural
    else:
        e = lex.get(obj, "noun")
        objs = e.forms[0] if e else obj + "s"
    color = W.COLOR_FACTS.get(obj) or rng.choice(W.COLORS)
    # An object adjective describes the thing, unless it would contradict a stated fact.
    adj_on_obj = acls in OBJECT_ADJ and not (acls == "color" and obj in W.COLOR_FACTS)
    if acls == "color" and adj_on_obj:
        color = adj
    show_color = not food or obj in W.COLOR_FACTS  # "a yellow banana", but not "a brown juice"
    if adj_on_obj and acls == "color":
        desc = f"{adj} {obj}"
    elif adj_on_obj and show_color and acls in ("size", "quality", "age") and rng.random() < 0.5:
        desc = f"{adj} {color} {obj}"
    elif adj_on_obj:
        desc = f"{adj} {obj}"
    elif show_color and rng.random() < 0.3:
        desc = f"{rng.choice(W.SIZES)} {color} {obj}"
    else:
        desc = f"{color} {obj}" if show_color else obj

    goals = list(GOALS)
    if noun in W.WEATHER:
        goals = ["visit"]
    elif food:  # food gets lost or put up high; it does not get fixed
        goals = ["find", "reach", "find", "reach", "visit", "learn"]
    elif holdable:
        goals = ["find", "reach", "fix", "find", "reach", "fix", "visit", "learn"]
    goal = rng.choice(goals)
    return {
        "hero": hero,
        "friend": friend,
        "parent": parent,
        "place": place,
        "obj": obj,
        "objs": objs,
        "color": color,
        "desc": desc,
        "goal": goal,
        "verb": verb,
        "vcls": vcls,
        "vforms": vforms,
        "noun": noun,
        "ncls": ncls,
        "plural": plural,
        "adj": adj,
        "acls": acls,
        "adj_on_obj": adj_on_obj,
        "owner": hero.name,
    }


def _fields(wd: dict[str, Any]) -> dict[str, str]:
    h, f, p = wd["hero"], wd["friend"], wd["parent"]
    v3, ved, ving = wd["vforms"]
    return {
        "N": h.name,
        "he": h.he,
        "He": h.He,
        "him": h.him,
        "his": h.his,
        "His": h.His,
        "himself": h.himself,
        "kind": h.kind,
        "F": f.name,
        "fhe": f.he,
        "fHe": f.He,
        "fHis": f.His,
        "fhim": f.him,
        "fhis": f.his,
        "fkind": f.kind,
        "fhimself": f.himself,
        "mom": p.name.lower(),
        "Mom": p.name,
        "mhe": p.he,
        "mHe": p.He,
        "place": wd["place"],
        "obj": wd["obj"],
        "objs": wd["objs"],
        "desc": wd["desc"],
        "a_desc": ("some " + wd["desc"]) if wd["obj"] in W.MASS else a(wd["desc"]),
        "color": wd["color"],
        "v": wd["verb"],
        "v3": v3,
        "ved": ved,
        "ving": ving,
        "noun": wd["noun"],
        "nouns": wd["plural"],
        "a_noun": ("some " + wd["noun"]) if wd["noun"] in W.MASS else a(wd["noun"]),
        "adj": wd["adj"],
        "a_adj": a(wd["adj"]),
        "spot": "",
        "tool": "",
    }


def _walk(rng: random.Random, w: dict[str, str]) -> str:
    animal = rng.choice([k for k in W.ANIMAL_KINDS if k not in W.COLOR_FACTS])
    size = rng.choice(("little", "big", "small", "tiny", "happy", "sleepy", "funny", "young"))
    return rng.choice(WALK).format(
        x=a(f"{size} {animal}"), y=rng.choice(WALK_SEE), **{k: w[k] for k in ("N", "F")}
    )


def _snack(rng: random.Random, w: dict[str, str]) -> str:
    foods = [f for f in FOODS if f not in W.COLOR_FACTS]
    f1, f2 = rng.sample(foods, 2)
    return rng.choice(SNACK).format(f1=_some(f1), f2=_some(f2), **w)


def _some(food: str) -> str:
    return ("some " + food) if food in W.MASS or food.endswith("s") else a(food)


_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")


def _tokens(text: str) -> set[str]:
    tokens = set(_WORD.findall(text.lower()))
    tokens.update(t.split("'")[0] for t in list(tokens) if "'" in t)  # "Lily's" counts as "lily"
    return tokens


def _uses(tokens: set[str], forms: set[str]) -> bool:
    return any(f.lower() in tokens for f in forms)


def _kind_phrase(rng: random.Random, c: Character) -> str:
    return a(rng.choice(("little ", "little ", "", "happy ", "small ")) + c.kind)


# Scenes that state who has, wants or needs what and then use it, told with the story's own
# characters: the in-context facts the procedural probes ask about (`synth/probes.py`), so a model
# trained on these stories can learn to track them. Each is a decoration, not part of the plot.
SCENE_P = 0.35
"""Chance of each context scene in a story (who is which animal, who has which toy)."""
REASON_P = 0.1
"""Chance of each reasoning scene (a choice between two things, two needs met): rarer than the
others, since "wanted a boat or a dog" and "gave a sandwich to Tom" read least like a story."""
EXTRA_DIALOGUE_P = 0.4
"""Chance that a story not asked for dialogue has some anyway, as most real TinyStories do."""
PRONOUN_P = 0.6
"""Chance that a sentence about the protagonist right after another starts with the pronoun."""


def _choice_scene(rng: random.Random, hero: Character, parent: Character) -> list[str]:
    """'{N} wanted a cat or a dog. Mom said he could not have the dog. So {N} got the cat.'"""
    x, y = rng.sample(W.WISHES, 2)  # x is what the child gets
    first, second = (x, y) if rng.random() < 0.5 else (y, x)
    ruled_out = f"{parent.name} said {hero.he} could not have the {y}"
    ruled_out += f", but the {x} was fine." if rng.random() < 0.5 else "."
    return [f"{hero.name} wanted {a(first)} or {a(second)}.", ruled_out, f"So {hero.name} got the {x}."]


def _needs_scene(rng: random.Random, hero: Character, friend: Character, parent: Character) -> list[str]:
    """'{N} was hungry, and {F} was thirsty. Mom gave a big sandwich to {N}.' (and the other thing)"""
    s1, s2 = rng.sample(list(W.NEEDS), 2)
    A, B = (hero, friend) if rng.random() < 0.5 else (friend, hero)
    lines = [f"{A.name} was {s1}, and {B.name} was {s2}."]
    order = [(A, s1), (B, s2)] if rng.random() < 0.5 else [(B, s2), (A, s1)]
    lines.append(f"{parent.name} gave {W.NEEDS[order[0][1]][0]} to {order[0][0].name}.")
    if rng.random() < 0.5:
        lines.append(f"Then {parent.name} gave {W.NEEDS[order[1][1]][0]} to {order[1][0].name}.")
    return lines


def tell(
    words: list[str], features: list[str], rng: random.Random, lex: Lexicon
) -> tuple[str, dict[str, Any]]:
    """Plan and tell one story; returns (text, annotations)."""
    wd = _plan_world(rng, words, lex)
    hero, friend, parent = wd["hero"], wd["friend"], wd["parent"]
    feats = set(features)
    w = _fields(wd)
    w["a_kind"] = _kind_phrase(rng, hero)
    w["a_fkind"] = a(friend.kind)
    w["A_noun"] = _cap(w["a_noun"])
    w["the_noun"] = "the " + wd["noun"]
    w["place2"] = rng.choice([p for p in W.PLACES if p != wd["place"]])
    w["spot"] = rng.choice(W.HIGH_SPOTS) if wd["goal"] == "reach" else rng.choice(W.HIDING_SPOTS)
    w["spot2"] = rng.choice([s for s in W.HIDING_SPOTS if s != w["spot"]])
    w["tool"] = rng.choice(W.TOOLS)
    w["game"] = rng.choice(GAMES)
    w["weather"] = wd["noun"] if wd["noun"] in W.WEATHER else rng.choice(("rain", "rain", "storm", "wind"))
    intrans = wd["vcls"] != "transitive"
    w["lv"] = wd["verb"] if intrans else wd["verb"] + " things"
    if wd["goal"] == "learn" and not intrans:
        w["lv"] = (
            rng.choice(("ride a bike", "swim", "skip", "climb a tree")) if rng.random() < 0.5 else w["lv"]
        )
    goal = wd["goal"]
    T = _Teller([hero, friend, parent], rng)
    dialogue = "Dialogue" in feats or rng.random() < EXTRA_DIALOGUE_P
    say: Callable[..., None] = T.say

    def pick(options: tuple[str, ...] | list[str]) -> str:
        return _pick(rng, options, w)

    def pick_clue(options: tuple[str, ...]) -> str:
        # "Tim's bag had a hole" cannot explain how the bag itself got lost.
        return pick([o for o in options if not re.search(rf"\b{wd['obj']}\b", o)] or options)

    # Where the item's words go. The verb is always used as a habit or an ending activity.
    verb_at_end = rng.random() < 0.4 and not (goal == "learn" and w["lv"].startswith(wd["verb"]))
    noun_used = wd["noun"] in (wd["obj"], wd["place"], friend.kind, parent.name.lower()) or (
        goal == "visit" and wd["noun"] in W.WEATHER
    )
    adj_used = wd["adj_on_obj"]
    acls = wd["acls"]

    # Paragraph 1: who, where, what they love.
    if hero.kind != friend.kind and rng.random() < SCENE_P:
        # Who is which, stated when they are introduced: "The duck's name was Tom." (the names probes)
        T.event("intro")
        say(f"Once upon a time, there was {a(hero.kind)} and {a(friend.kind)}.")
        T.event("friend")
        say(f"The {hero.kind}'s name was {hero.name}, and the {friend.kind}'s name was {friend.name}.")
    else:
        T.event("intro")
        say(pick(INTRO))
        T.event("friend")  # always, and early: later events may name the friend
        say(pick(FRIEND_INTRO))
    if acls in ("trait", "feeling"):
        T.event("adj:" + acls)
        say(pick(ADJ_SLOT[acls]))
        adj_used = True
    if not verb_at_end:
        T.event("habit")
        say(pick(VERB_HABIT_I if intrans else VERB_HABIT_T))
    if goal not in ("learn", "visit") or wd["adj_on_obj"] or rng.random() < 0.5:
        T.event("object")
        say(pick(OBJ_INTRO))
    if rng.random() < 0.35 and goal != "visit":
        thing = rng.choice(list(W.COLOR_FACTS))
        T.event("scenery")
        if thing in W.MASS or thing in ("sky", "sun", "night"):
            say(f"The {thing} was {W.COLOR_FACTS[thing]}.")
        else:
            say(f"{hero.name} saw {a(thing)}.")
            say(f"The {thing} was {W.COLOR_FACTS[thing]}.")
    if rng.random() < 0.4:
        T.event("play")
        say(pick(PLAY))
    owned: dict[str, str] = {}
    if rng.random() < SCENE_P:
        t1, t2 = rng.sample([t for t in W.TOYS if t != wd["obj"]], 2)  # not the thing the plot is about
        c1, c2 = rng.sample(W.COLORS, 2)
        A, B = (hero, friend) if rng.random() < 0.5 else (friend, hero)
        owned = {A.name: t1, B.name: t2}
        T.event("toys")
        say(f"{A.name} had {a(c1 + ' ' + t1)}, and {B.name} had {a(c2 + ' ' + t2)}.")
    if rng.random() < REASON_P:
        T.event("choice")
        for line in _choice_scene(rng, hero, parent):
            say(line)
    if "Foreshadowing" in feats:
        T.event("setup")
        say(pick_clue(SETUP[goal]), "Foreshadowing")

    # Paragraph 2: the goal and what stands in the way.
    T.para()
    conflict_kind = ""
    if "Conflict" in feats:
        # The two want incompatible things before the main problem starts.
        conflict_kind = "place" if goal == "visit" else "obj"
        T.event("conflict:" + conflict_kind)
        say(pick(CONFLICT[conflict_kind]), "Conflict")
        if dialogue and rng.random() < 0.7:
            say(
                pick(
                    (
                        '"It is mine!" said {N}.',
                        '"But I want it too!" said {F}.',
                        '"No, it\'s my turn!" {N} shouted.',
                    )
                ),
                "Conflict",
            )
    T.event("goal:" + goal)
    say(pick(GOALS_T[goal]))
    if dialogue:
        say(pick(GOAL_TALK[goal]))
        if rng.random() < 0.6:
            say(pick(GOAL_REPLY[goal]))
    if acls in ("temperature", "weather", "sound", "taste") and not adj_used:
        T.event("adj:" + acls)
        say(pick(ADJ_SLOT[acls]))
        adj_used = True
    bad = "BadEnding" in feats
    if rng.random() < 0.35:
        T.event("walk")
        say(_walk(rng, w))
    # The setup pays off as the cause of the problem: before it (the wind carries the
    # thing up), instead of it (it breaks, the storm comes, the child trips), or as
    # the explanation after it (the hole in the pocket).
    payoff = "Foreshadowing" in feats
    if payoff and goal == "reach":
        T.event("payoff")
        say(pick_clue(PAYOFF[goal]), "Foreshadowing")
    if payoff and goal in ("fix", "visit", "learn"):
        T.event("obstacle:payoff")
        say(pick_clue(PAYOFF[goal]), "Foreshadowing")
    else:
        T.event("obstacle")
        say(pick(OBSTACLE[goal]))
    if payoff and goal == "find":
        T.event("payoff")
        say(pick_clue(PAYOFF[goal]), "Foreshadowing")
    if dialogue:
        say(pick(OBSTACLE_TALK))
    if not noun_used and wd["ncls"] == "body":
        T.event("noun:body")
        say(pick(NOUN_SLOT["body"]))
        noun_used = True

    # Paragraph 3: help, twist, and how it turns out.
    T.para()
    helper = rng.choice(("friend", "parent", "idea"))
    if conflict_kind and bad:
        T.event("quarrel")
        say(pick(CONFLICT_BAD), "Conflict", "BadEnding")
    T.event("help:" + helper)
    say(pick(HELP[helper]))
    if dialogue:
        say(pick(HELP_TALK[helper]))
        if helper in HELP_THANKS and rng.random() < 0.5:
            say(pick(HELP_THANKS[helper]))
    if helper == "idea":  # an idea is followed by what it was
        T.event("idea")
        say(pick(IDEA[goal]))
    if not noun_used and wd["ncls"] in ("animal", "person", "nature", "place"):
        T.event("noun:" + wd["ncls"])
        say(pick(NOUN_SLOT[wd["ncls"]]))
        noun_used = True
    twist = "Twist" in feats
    if bad:
        if twist:
            T.event("twist:worse")
            say(pick(TWIST_BAD[goal]), "Twist", "BadEnding")
        T.event("fail")
        say(pick(FAIL[goal]), "BadEnding")
    elif twist:
        T.event("twist:solves")  # the surprise is the solution
        say(pick(TWIST[goal]), "Twist")
    else:
        T.event("resolve")
        say(pick(RESOLVE[goal]))
    if conflict_kind and not bad:  # the quarrel is made up once the problem is solved
        T.event("reconcile")
        say(pick(CONFLICT_GOOD), "Conflict")

    # Paragraph 4 (and 5): the ending, any word still unused, the lesson.
    T.para()
    if rng.random() < 0.35:
        T.event("snack")
        say(_snack(rng, w))
    if rng.random() < REASON_P:
        T.event("needs")
        for line in _needs_scene(rng, hero, friend, parent):
            say(line)
    if owned:
        X = rng.choice((hero, friend))
        T.event("toys:again")
        # "his own toy" would be the plot's thing when that thing is a toy called "toy".
        retrieve = RETRIEVE[1:] if wd["obj"] == "toy" else RETRIEVE
        say(rng.choice(retrieve).format(n=X.name, p=X.his, t=owned[X.name]))
    tokens = _tokens(T.text())
    if not _uses(tokens, lex.forms_of(wd["noun"], "noun")):
        noun, ncls = wd["noun"], wd["ncls"]
        own = "fixed" if noun in W.FIXED else noun if noun in W.OWN_LINES else None
        slot = own or (ncls if ncls in ("animal", "person", "nature", "body", "place") else "other")
        T.event("noun:" + slot)
        say(pick(NOUN_SLOT[slot]))
        tokens |= _tokens(T.paras[-1][-1])
    if not _uses(tokens, lex.forms_of(wd["adj"], "adjective")):
        slot = acls if acls in ADJ_SLOT else "object"
        T.event("adj:" + slot)
        say(pick(ADJ_SLOT[slot]))
        tokens |= _tokens(T.paras[-1][-1])
    if verb_at_end or not _uses(tokens, lex.forms_of(wd["verb"], "verb")):
        T.event("activity")
        # After a bad ending the thing is lost or broken: the activity leaves it out.
        say(pick(VERB_END_I if intrans else VERB_END_T_NO_OBJ if bad else VERB_END_T))
    if bad:
        T.event("end:sad")
        say(pick(SAD_END), "BadEnding")
        if dialogue:
            say(pick(SAD_TALK), "BadEnding")
    else:
        T.event("end:happy")
        say(pick(HAPPY_END))
        if dialogue:
            say(pick(HAPPY_TALK))
    if "MoralValue" in feats:
        if rng.random() < 0.4:
            T.para()
        T.event("moral")
        lesson = "bad" if bad else ("share" if conflict_kind else helper)
        say(pick(MORAL[lesson]), "MoralValue")
        if rng.random() < 0.5:
            say("The end.")
    elif rng.random() < 0.3:
        say("The end.")

    text = T.text()
    # Only what the text states: the description (with its color) and the owner come from the object's intro.
    facts: dict[str, str] = {}
    if wd["desc"] in text:
        facts["description"] = wd["desc"]
        if wd["color"] in wd["desc"].split():
            facts["color"] = wd["color"]
        size = wd["desc"].split()[0]
        if size in W.SIZES or (size == wd["adj"] and wd["acls"] == "size"):
            facts["size"] = size
        facts["owner"] = hero.name
    chars = [
        {"name": c.name, "kind": c.kind, "gender": c.gender, "role": c.role, "first_mention": T.first[c.name]}
        for c in (hero, friend, parent)
        if c.name in T.first
    ]
    annotations = {
        "characters": chars,
        "protagonist": hero.name,
        "place": wd["place"],
        "objects": [{"name": wd["obj"], "facts": facts}] if re.search(rf"\b{wd['obj']}", text) else [],
        "goal": goal,
        "possessions": owned,
        "skeleton": T.events,
        "feature_sentences": {f: T.features.get(f, []) for f in features},
        "n_sentences": T.n,
        "sentence_events": T.labels,
    }
    return text, annotations


# Events that only add colour (and carry the item's words); the rest is the plot.
DECORATION = (
    "intro",
    "friend",
    "habit",
    "object",
    "scenery",
    "play",
    "walk",
    "snack",
    "activity",
    "adj:",
    "noun:",
    "toys",
    "choice",
    "needs",
)


def core_plot(skeleton: list[str]) -> tuple[str, ...]:
    """The plot events of a skeleton, without the decorative ones."""
    return tuple(e for e in skeleton if not e.startswith(DECORATION))


def story_record(seed: int, i: int, lexicon: Lexicon | None = None) -> dict[str, Any]:
    """The full story record for item i of a job with this seed (same inputs -> same record)."""
    lex = lexicon or load_lexicon()
    words, features = sample_item(seed, i, lex)
    text, ann = tell(words, features, item_rng(seed, i, "story"), lex)
    return {
        "id": f"proc-{seed}-{i:08d}",
        "story": text,
        "prompt": story_prompt(words, features),
        "words": words,
        "features": features,
        "summary": summarize(ann, words),
        "source": "procedural",
        "seed": seed,
        "index": i,
        "annotations": ann,
    }


SUMMARY = {
    "find": "{N} loses {his} {obj} and looks everywhere for it",
    "reach": "{N}'s {obj} gets stuck up high",
    "fix": "{N}'s {obj} breaks",
    "visit": "{N} wants to go to the {place}, but the weather gets in the way",
    "learn": "{N} tries hard to learn something new",
}


def summarize(ann: dict[str, Any], words: list[str]) -> str:
    """A one- or two-line summary from the plot, in the style of the Instruct summaries."""
    hero = next(c for c in ann["characters"] if c["role"] == "protagonist")
    c = Character(hero["name"], hero["kind"], hero["gender"])
    obj = ann["objects"][0]["name"] if ann["objects"] else "toy"
    w = {"N": c.name, "his": c.his, "obj": obj, "place": ann["place"]}
    first = SUMMARY[ann["goal"]].format(**w)
    sk = ann["skeleton"]
    if "fail" in sk:
        end = "In the end, things do not work out, and it is a sad day."
    elif "help:friend" in sk:
        end = "With a friend's help, everything turns out well."
    elif "help:parent" in sk:
        end = f"With help from {c.his} family, everything turns out well."
    else:
        end = f"{c.name} has a clever idea, and everything turns out well."
    if "twist" in sk:
        end = "Something surprising happens. " + end
    return f"{first}. {end}"
