"""The sentences the procedural engine tells its events with.

Each tuple holds interchangeable templates for one event; `{N}` is the
protagonist's name, `{he}`/`{his}`/`{him}` its pronouns, `{F}` the friend and
`{fhe}`... the friend's pronouns, `{mom}` the parent, `{obj}` the thing the
plot is about, `{place}` the setting and `{v}`/`{ved}`/`{ving}`, `{noun}`,
`{adj}` the item's words. Every template is one sentence.
"""

from __future__ import annotations

INTRO = (  # "Once upon a time, there was" three times: most real stories open this way (choices are uniform)
    "Once upon a time, there was {a_kind} named {N}.",
    "Once upon a time, there was {a_kind} named {N}.",
    "Once upon a time, there was {a_kind} named {N}. {He} lived in a small house with {his} family.",
    "Once upon a time, in a big {place}, there lived {a_kind} named {N}.",
    "Once upon a time, in a little town, there lived {a_kind} named {N}.",
    "Once upon a time, there lived {a_kind} named {N}.",
    "Once upon a time, there was {a_kind} called {N}.",
    "Once upon a time, {a_kind} named {N} lived in a small house.",
    "Once upon a time, near a quiet {place}, there was {a_kind} named {N}.",
    "Once upon a time, there was {a_kind} named {N} who loved to play.",
    "Once upon a time, there was {a_kind} named {N}. {He} was very kind.",
    "Once upon a time, there was {a_kind} named {N}. {He} lived with {his} {mom}.",
    "Once there was {a_kind} named {N}.",
    "One day, {a_kind} named {N} woke up early.",
    "One day, {N}, {a_kind}, woke up early and went outside to play.",
    "One day, {N}, {a_kind}, went to the {place} with {his} {mom}.",
    "One sunny morning, {a_kind} named {N} woke up early.",
    "In a small house by the {place}, there lived {a_kind} named {N}.",
    "{N} was {a_kind} who liked to laugh.",
    "{N} was a little {kind} with a big smile.",
    "Once upon a time, {a_kind} named {N} lived near the {place} with {his} {mom}.",
    "One sunny day, {a_kind} named {N} went out to play.",
)
FRIEND_INTRO = (
    "{N} had a friend named {F}.",
    "{N} had a best friend named {F}.",
    "{N} had a good friend, {a_fkind} named {F}.",
    "{N} had a friend, {a_fkind} named {F}.",
    "{N} had a best friend, {a_fkind} named {F}.",
    "{N} liked to play with {a_fkind} named {F}.",
    "{N} had a friend, {a_fkind} named {F}, who lived nearby.",
    "{N} had a friend named {F}. {F} was {a_fkind}.",
    "{N} had a friend. {fHis} name was {F}.",
    "Every day, {N} played with {his} friend, {a_fkind} named {F}.",
    "{N} had a new friend, {a_fkind} named {F}.",
    "{N} and {his} friend {F}, {a_fkind}, liked to play outside.",
    "{N} had a friend, {a_fkind} named {F}, who lived next door.",
    "{N} had a friend called {F}, and they played together every day.",
    "{N}'s friend was {a_fkind} named {F}. {F} was very nice.",
)
VERB_HABIT_I = (
    "{N} loved to {v}.",
    "{N} liked to {v} every day.",
    "{N} loved to {v} with {his} friend.",
    "{N} liked to {v} in the {place}.",
    "Every day, {N} would {v} with {F}.",
    "{N} was very good at {ving}.",
    "{N} liked to {v} after lunch.",
    "{N} loved to {v} more than anything.",
    "{N} and {F} liked to {v} together.",
)
VERB_HABIT_T = (
    "{N} loved to {v} things.",
    "{N} liked to {v} things with {F}.",
    "Every day, {N} helped {his} {mom} {v} things.",
    "{N} liked to {v} the {obj} every day.",
    "{N} liked to {v} things in the {place}.",
    "{N} could {v} things all by {himself}.",
    "Every morning, {N} would {v} things with {his} {mom}.",
)
VERB_END_I = (
    "Then {N} and {F} {ved} together until the sun went down.",
    "After that, they {ved} all day long.",
    "Then they {ved} in the {place} together.",
    "They {ved} and laughed all day.",
)
VERB_END_T = (
    "Then {N} and {F} {ved} the {obj} together.",
    "After that, {N} {ved} the {obj} with great care.",
    "Then {N} showed {F} how to {v} things.",
    "They {ved} the {obj} together and had lots of fun.",
)
VERB_END_T_NO_OBJ = ("Later, {N} showed {F} how to {v} things.", "The next day, {N} and {F} {ved} some old boxes.")
OBJ_INTRO = (
    "{N} had {a_desc}.",
    "{N} had {a_desc}. {He} loved it very much.",
    "{N}'s favorite toy was {a_desc}.",
    "{N} had {a_desc} that {he} loved very much.",
    "{His} {mom} gave {him} {a_desc}.",
    "One day, {his} {mom} gave {him} {a_desc}.",
    "{N} loved {his} {desc} very much.",
    "{N} got {a_desc} for {his} birthday.",
    "{N} had {a_desc}. It was {his} favorite.",
    "{N} liked to play with {his} {desc}.",
    "{N} always took {his} {desc} with {him}.",
    "{N} had {a_desc}, and {he} took it everywhere.",
)
GOALS_T: dict[str, tuple[str, ...]] = {
    "find": (
        "One day, {N} couldn't find {his} {obj}.",
        "One morning, {his} {obj} was gone.",
        "After a long day at the {place}, {N} wanted to play with {his} {obj}, but it was missing.",
        "One day, {N} looked for {his} {obj}, but it was not there.",
        "When {N} woke up, {his} {obj} was not in {his} room.",
        "One day, {N} wanted {his} {obj}, but {he} couldn't find it anywhere.",
    ),
    "reach": (
        "One windy day, {N} took {his} {obj} to the {place}.",
        "One windy afternoon, {N} and {F} played with the {obj} near the {place}.",
        "One day, {N} played with {his} {obj} in the {place}.",
        "One sunny day, {N} and {F} went to the {place} with the {obj}.",
        "{N} threw {his} {obj} up in the air at the {place}.",
    ),
    "fix": (
        "One day, {N} was playing with {his} {obj} at the {place}.",
        "One afternoon, {N} showed {his} {obj} to {F} at the {place}.",
        "{N} took {his} {obj} everywhere, even to the {place}.",
        "{N} and {F} played with the {obj} all morning.",
        "One day, {N} took {his} {obj} to the {place} to show {F}.",
    ),
    "visit": (
        "One day, {N} wanted to go to the {place}.",
        "{N} wanted to play at the {place} with {F}.",
        "{N} and {F} made a plan to go to the {place} after lunch.",
        "One morning, {N} asked to go to the {place}.",
        "{N} wanted to go to the {place} and play all day.",
        "One day, {F} asked {N} to come to the {place}.",
    ),
    "learn": (
        "{N} wanted to learn to {lv}.",
        "One day, {N} saw {F} {lv} and wanted to try too.",
        "{N} wished {he} could {lv} like the big kids.",
        "{N} really wanted to {lv}, but {he} didn't know how.",
        "{F} could {lv}, and {N} wanted to {lv} too.",
    ),
}
GOAL_TALK = {
    "find": (
        '"Where is my {obj}?" {N} asked.',
        '"Where did my {obj} go?" asked {N}.',
        '"{Mom}, have you seen my {obj}?" asked {N}.',
        '"I can\'t find my {obj}!" {N} said.',
    ),
    "reach": (
        '"Look how high it goes!" said {N}.',
        '"I want to throw it up high!" said {N}.',
        '"Watch this!" {N} said to {F}.',
        '"Let\'s see how high it can go!" said {N}.',
    ),
    "fix": (
        '"I love my {obj} so much," said {N}.',
        '"Look at my {obj}!" {N} said to {F}.',
        '"This is my best {obj}," {N} said.',
    ),
    "visit": (
        '"Can we go to the {place}, please?" {N} asked {his} {mom}.',
        '"I want to go to the {place}!" said {N}.',
    ),
    "learn": ('"I want to {lv} too!" said {N}.', '"Can you show me how to {lv}?" {N} asked {F}.'),
}
GOAL_REPLY = {  # what the friend or the parent says back
    "find": (
        '"Let\'s look for it together," said {F}.',
        '"Don\'t worry, we will find it," replied {his} {mom}.',
        '"I will help you look," said {F}.',
    ),
    "reach": ('"Be careful!" said {his} {mom}.', '"Wow, it can go so high!" said {F}.', '"Let me try too!" said {F}.'),
    "fix": ('"It\'s a very nice {obj}," said {F}.', '"Be careful with it," said {his} {mom}.', '"Can I see it?" asked {F}.'),
    "visit": (
        '"Yes, we can go after lunch," replied {his} {mom}.',
        '"Yes, let\'s go!" replied {F}.',
        '"Okay, but we must be back for dinner," said {his} {mom}.',
    ),
    "learn": ('"You can do it!" said {F}.', '"Just try your best," replied {his} {mom}.', '"I will show you how," said {F}.'),
}
SETUP = {  # Foreshadowing: an early detail the plot comes back to.
    "find": (
        "{N}'s bag had a small hole in it.", "{N} did not see that {his} pocket had a hole.",
        "There was a small hole in {N}'s pocket, but {he} did not know.",
    ),
    "reach": (
        "The wind was starting to blow hard.",
        "It was a very windy day.",
        "There was a very tall tree in the middle of the {place}.",
    ),
    "fix": (
        "{His} {mom} said the {obj} could break if it fell.",
        "The {obj} was old, and one part was loose.",
        "{His} {mom} said to be careful, because the {obj} could break.",
    ),
    "visit": (
        "There were some dark clouds in the sky.", "The sky was getting gray.",
        "The sky was blue, but the wind was getting cold.",
        "{His} {mom} said the weather might change later.",
    ),
    "learn": ("There was a big rock on the path.", "{F} said it was hard at first for everyone."),
}
PAYOFF = {
    "find": (
        "The {obj} must have fallen out through the hole.",
        "Now {N} knew that the {obj} had slipped out through the little hole.",
        "The {obj} had fallen out of the hole on the way!",
    ),
    "reach": (
        "A big gust of wind blew the {obj} up high.",
        "The wind took the {obj} and carried it up, up, up.",
    ),
    "fix": (
        "Just like {his} {mom} said, the {obj} fell and broke.",
        "Soon the loose part fell off, and the {obj} broke.",
    ),
    "visit": (
        "There were some dark clouds far away in the sky.",
        "There were some big gray clouds in the sky.",
        "The sky was getting dark.",
        "Soon the sky turned gray, and the wind began to blow.",
    ),
    "learn": ("{N} tripped on the big rock and fell down.", "It was hard, just like {F} said."),
}
OBSTACLE = {
    "find": (
        "{N} looked {spot}, but the {obj} was not there.",
        "{N} searched the whole {place}, but {he} couldn't find it.",
        "{N} looked high and low, {spot} and everywhere else, but there was no {obj}.",
        "{N} looked everywhere, but the {obj} was gone.",
    ),
    "reach": (
        "The {obj} got stuck on the {spot}.", "Now the {obj} was stuck high up on the {spot}!",
        "The {obj} went up, up, up and got stuck on the {spot}.",
        "The {obj} flew up and got stuck on the {spot}.",
    ),
    "fix": (
        "{N} dropped the {obj}, and it broke.",
        "The {obj} fell on the ground and broke into two pieces.",
        "The {obj} hit a rock and broke.",
        "Then the {obj} fell down and broke.",
    ),
    "visit": (
        "But then the {weather} came, and they had to stay inside.",
        "But the {weather} was too strong, so they couldn't go out.",
        "Just then, the {weather} started, and they had to go back inside.",
    ),
    "learn": (
        "{N} tried, but {he} fell down.", "{N} tried again and again, but {he} kept falling.",
        "It was very hard, and {N} fell down.",
        "{N} tried and tried, but it was too hard.",
    ),
}
OBSTACLE_TALK = (
    '"Oh no!" cried {N}.',
    '"Oh no! What can I do?" said {N}.',
    '"Help!" {N} cried.',
    '"What do I do now?" {N} asked.',
    '"This is too hard," said {N} sadly.',
    '{N} said, "What can I do?"',
    '"Oh no, what will I do?" {N} said.',
    '{N} was sad. "Can someone help me?" {he} asked.',
    '"Oh no! This is bad," said {N}.',
)
CONFLICT = {
    "obj": (
        "{F} wanted to play with the {obj} too, but {N} didn't want to share.",
        "{F} grabbed the {obj} and said it was {fhis} turn.",
        "{F} wanted the {obj} for {fhimself}, and {N} wanted it too.",
        "{F} took the {obj} and would not give it back.",
    ),
    "place": (
        "{F} wanted to go to the {place2}, but {N} wanted to go to the {place}.",
        "{N} and {F} couldn't agree: one wanted the {place}, the other wanted the {place2}.",
        "{F} said the {place2} was more fun, but {N} did not agree.",
    ),
}
CONFLICT_GOOD = (
    "They decided to take turns, and both of them smiled.",
    "In the end, they agreed to share.",
    "They said sorry to each other and played together.",
    "{N} and {F} made up and shared the {obj}.",
    "After that, {N} let {F} have a turn too.",
    "{N} said sorry to {F}, and they played together.",
)
CONFLICT_BAD = (
    "They pulled and pulled, and nobody won.",
    "They shouted at each other and both felt bad.",
    "{N} and {F} were cross with each other and didn't talk.",
)
HELP = {
    "friend": (
        "{F} came to help {him}.",
        "{F} came by and said {fhe} would help.",
        "{F} saw that {N} was sad and came to help.",
        "{F} heard {N} and ran over as fast as {fhe} could.",
        "Just then, {F} walked by and stopped to help.",
        "{F} ran over to see what was wrong.",
        "Soon, {F} came by and asked what was wrong.",
    ),
    "parent": (
        "{N} went to {his} {mom} for help.",
        "{His} {mom} saw {him} and came to help.",
        "{N} ran home and told {his} {mom} everything.",
        "{His} {mom} heard {him} and came outside.",
        "{N} asked {his} {mom} for help.",
        "{His} {mom} came to see what was wrong.",
    ),
    "idea": (
        "Then {N} had an idea.",
        "{N} stopped and thought very hard.",
        "{N} sat down, took a deep breath, and thought.",
        "Then a good idea popped into {N}'s head.",
        "After a while, {N} had an idea.",
        "{N} looked around and thought.",
    ),
}
IDEA = {  # what the idea was, told right after it
    "find": (
        "{N} decided to look in every place {he} had been that day.",
        "{N} thought about where {he} had played last and went back there.",
        "{N} went back to the {place} to look again.",
    ),
    "reach": (
        "{N} went to get a {tool} to reach the {obj}.", "{N} ran to get a {tool}.",
        "{N} asked {his} {mom} for a {tool}.",
    ),
    "fix": (
        "{N} went to find some glue and tape.", "{N} got some tape from the kitchen drawer.",
        "{N} asked {his} {mom} for some glue.",
    ),
    "visit": (
        "{N} decided to wait by the window until the {weather} stopped.",
        "{N} made a plan to go as soon as the {weather} was over.",
        "{N} decided to play inside and go to the {place} later.",
    ),
    "learn": (
        "{N} decided to practice a little bit every day.", "{N} asked {F} to hold on at the start.",
        "{N} decided to try again and again.",
    ),
}
HELP_TALK = {
    "friend": (
        '"Don\'t worry, I will help you," said {F}.',
        '"What is wrong?" {F} asked.',
        '{F} said, "We can do it together!"',
        '"I can help you," said {F}.',
        '"Come on, let\'s go," {F} said.',
    ),
    "parent": (
        '"Let\'s do it together," said {his} {mom}.',
        '"Don\'t be sad," {his} {mom} said.',
        '{His} {mom} smiled and said, "I will help you."',
        '"It will be okay," said {his} {mom}.',
    ),
    "idea": (
        '"I know what to do!" said {N}.',
        '{N} said, "I have an idea!"',
        '"I know!" said {N}.',
        '{N} smiled and said, "I know how we can do it!"',
    ),
}
HELP_THANKS = {  # the hero answers the helper
    "friend": ('"Thank you, {F}!" said {N}.', '"Okay, let\'s try," said {N}.', '"You are a good friend," said {N}.'),
    "parent": ('"Thank you, {Mom}," said {N}.', '"Okay," said {N} with a smile.', '"Thank you," {N} said.'),
}
RESOLVE = {
    "find": (
        "Together they found the {obj} {spot2}.",
        "At last, they found the {obj} {spot2}!",
        "They looked {spot2}, and there it was: the {obj}!",
        "After a while, they found the {obj} {spot2}.",
        "{N} looked {spot2} and found the {obj} at last.",
        "Then {N} looked {spot2}, and {he} found the {obj}!",
    ),
    "reach": (
        "They used a {tool} to get the {obj} down.",
        "With a {tool}, the {obj} came down at last.",
        "{N} got a {tool}, reached up high, and pulled the {obj} down.",
        "With the help of a {tool}, the {obj} was down at last.",
        "{N} used a {tool}, and the {obj} came down.",
    ),
    "fix": (
        "They fixed the {obj} with some glue.",
        "With a little tape, the {obj} was as good as new.",
        "They put the pieces back together, and the {obj} was fixed.",
        "With some glue and a little help, the {obj} was fixed.",
    ),
    "visit": (
        "They waited until the sun came out, and then they went to the {place}.",
        "Soon the {weather} stopped, and they ran to the {place}.",
        "At last the sun came out, and they went to the {place}.",
    ),
    "learn": (
        "{N} tried one more time, and this time {he} did it!", "Step by step, {N} learned to {lv}.",
        "{N} kept trying, and at last {he} could {lv}!",
    ),
}
FAIL = {
    "find": (
        "They looked and looked, but the {obj} was gone for good.", "The {obj} was never found.",
        "{N} never found the {obj} again.",
    ),
    "reach": (
        "Then the wind came back and blew the {obj} far away, where nobody could find it.",
        "They couldn't reach it, and the {obj} stayed up there forever.",
        "The {obj} stayed stuck up there, and {N} couldn't get it back.",
    ),
    "fix": (
        "They tried to fix it, but the {obj} was broken for good.",
        "The glue didn't work, and the {obj} stayed broken.",
        "Nobody could fix the {obj}, and it stayed broken.",
    ),
    "visit": (
        "The {weather} did not stop, and they never got to the {place}.",
        "The {weather} went on all day, and the trip was over.",
        "The {weather} did not stop until night, so they stayed home.",
    ),
    "learn": (
        "{N} tried, but {he} fell down.",
        "{N} tried again and again, but {he} kept falling.",
        "It was very hard, and {N} fell down.",
        "{N} couldn't do it, and {he} went home sad.",
    ),
}
TWIST = {  # with a good ending the surprise itself solves the problem
    "find": (
        "But the {obj} was in {his} own pocket the whole time!",
        "Then {N} saw that {F}'s puppy had the {obj} all along!",
        "Then the {obj} fell out of {his} hat, where it had been all day!",
    ),
    "reach": (
        "Then a bird flew down and pushed the {obj} off the {spot}!",
        "Suddenly, a kind giraffe walked by and took the {obj} down!",
    ),
    "fix": (
        "But when {N} looked closer, the {obj} was not broken at all, and the parts clicked back together!",
        "Then {N} found that the broken parts of the {obj} made something new and even better.",
    ),
    "visit": (
        "Suddenly, the {weather} stopped and a big rainbow came out over the {place}!",
        "But when they got to the {place}, all their friends were waiting with a surprise under a big tent!",
    ),
    "learn": (
        "{N} tried one more time, and to everyone's surprise, {he} did it!",
        "Then {N} saw that {F} had been holding on the whole time, and {N} could do it alone!",
    ),
}
TWIST_BAD = {  # with a bad ending the surprise makes things worse
    "find": (
        "Then {N} saw that a big dog had taken the {obj} far away!",
        "But a bird had picked up the {obj} and flown away with it!",
    ),
    "reach": (
        "Then a big bird flew down and took the {obj} to its nest!",
        "Suddenly, the {spot} began to shake!",
    ),
    "fix": (
        "But when {N} looked closer, there was another crack too!",
        "Then, to {his} surprise, a third piece fell off!",
    ),
    "visit": (
        "Then {N} heard that the {place} was closed!",
        "Suddenly, the wind blew their picnic away!",
    ),
    "learn": (
        "Suddenly, {F} fell down too!",
        "Then {N} saw that it was much harder than it looked!",
    ),
}
HAPPY_END = (
    "{N} was very happy.",
    "{N} was so happy!",
    "They were very happy.",
    "From that day on, {N} and {F} played together every day.",
    "{N} smiled a big smile.",
    "{N} hugged {F} and said thank you.",
    "That night, {N} went to sleep with a happy heart.",
    "From that day on, {N} and {F} were best friends.",
    "{N} felt warm and happy inside.",
    "{N} and {F} laughed and played until it was time for bed.",
    "{N} gave {his} {mom} a big hug.",
    "It was the best day {N} ever had.",
    "{N} and {F} had so much fun that day.",
    "{N} felt proud and happy.",
    "They played together all day and had lots of fun.",
    "{N} and {F} were very happy, and they went home together.",
    "{N} was happy, and {his} {mom} was happy too.",
    "They all smiled and went home.",
)
HAPPY_TALK = (
    '"Thank you so much!" said {N}.',
    '"This is the best day ever!" {N} said.',
    '{N} said, "I\'m so happy!"',
    '"We did it!" {N} shouted.',
    '{N} smiled and said, "Thank you for helping me."',
    '"Yay!" said {N}. "I am so happy now."',
    '"I love you, {Mom}," said {N}.',
    '"That was so much fun!" said {N}.',
    '"Thank you for being my friend," {N} said to {F}.',
)
SAD_END = (
    "{N} went home feeling very sad.",
    "{N} sat down and cried.",
    "It was a sad day for {N}.",
    "{N} did not play for the rest of the day.",
    "{N} walked home slowly, with tears in {his} eyes.",
    "{N} was sad all night.",
    "{N} hugged {his} {mom}, but {he} was still sad.",
    "{N} felt sad for a long time.",
    "That night, {N} went to bed with a heavy heart.",
    "{N} was very sad, and {F} was sad too.",
    "{N} went home and told {his} {mom}, and {he} cried.",
)
SAD_TALK = (
    '"I miss my {obj}," said {N} quietly.',
    '"I wish I had been more careful," {N} said.',
    '{N} said, "Maybe next time."',
    '"It is not fair," {N} said, and {he} began to cry.',
    '{N} looked down and said, "I am sad."',
    '"Why did this happen?" {N} asked.',
)
MORAL = {
    "friend": (
        "{N} learned that friends are there to help.",
        "The moral of the story is that it is good to help each other.",
        "{N} learned that it is good to have a friend who helps.",
    ),
    "parent": (
        "{N} learned to ask for help when things are hard.",
        "{N} learned that it is good to listen to {his} {mom}.",
        "The moral of the story is that it is okay to ask for help.",
    ),
    "idea": (
        "{N} learned that a little thinking can fix a big problem.",
        "{N} learned to never give up.",
        "The moral of the story is to never give up.",
    ),
    "share": (
        "{N} learned that sharing is better than fighting.",
        "The moral of the story is that sharing makes everyone happy.",
        "{N} learned that it is more fun to share.",
    ),
    "bad": (
        "{N} learned to be more careful.",
        "The moral of the story is to be careful with the things you love.",
        "{N} learned that it is important to be careful.",
    ),
}
# Where each class of noun and adjective goes when it is not the thing the plot is about.
NOUN_SLOT = {
    "animal": ("Near the {place}, {N} saw {a_noun}.", "{A_noun} was sitting by the {place}."),
    "person": ("{N} waved to {the_noun}.", "Then they met {a_noun} who smiled at them."),
    "nature": ("{N} looked at the {noun} for a long time.", "They sat near the {noun} and talked."),
    "body": ("{N} had a little mark on {his} {noun}.", "{N} rubbed {his} {noun} and kept going."),
    "place": ("Later, they went to the {noun}.",),
    "other": ("{N} also took {a_noun} along.", "There was {a_noun} by the door."),
    "fixed": ("On the way, {N} saw {a_noun}.", "They walked past {a_noun}."),
    "story": ("Later, {his} {mom} told them a story.", "That night, {his} {mom} read {N} a story."),
    "song": ("On the way, they sang a song.", "{N} sang a happy song."),
    "pocket": ("{N} put a little stone in {his} pocket.", "{N} kept a shiny coin in {his} pocket."),
}
ADJ_SLOT = {
    "temperature": ("It was {a_adj} day.", "The day was {adj}, so {N} stayed close to {his} {mom}."),
    "weather": ("It was {a_adj} day.", "Outside, the day was {adj}."),
    "taste": ("{His} {mom} gave them some {adj} cookies.", "They ate {a_adj} snack together."),
    "sound": ("Then {N} heard {a_adj} sound.", "Something {adj} was going on next door."),
    "feeling": ("{N} felt {adj}.", "That morning, {N} woke up feeling {adj}."),
    "trait": ("{N} was {a_adj} little {kind}.", "Everyone knew {N} was very {adj}."),
    "state": ("{N} was {adj} now.", "By then, {N} was {adj}."),
    "object": ("{F} had {a_adj} hat.", "{F} brought {a_adj} box to the {place}."),
}


PLAY = (
    "{N} and {F} played {game} all morning.",
    "In the morning, {N} and {F} played {game} in the {place}.",
    "They liked to play {game} together.",
    "They played {game} all day.",
    "Every day, {F} came over to play {game} with {N}.",
    "{N} liked to play {game} with {F} in the {place}.",
    "They loved to play {game} in the {place}.",
    "One day, {N} and {F} played {game} in the {place}.",
)
GAMES = (
    "tag",
    "hide and seek",
    "catch",
    "with blocks",
    "in the sand",
    "with their toys",
    "house",
    "a counting game",
    "a jumping game",
    "pretend",
    "with a big box",
    "by the water",
    "dress up",
    "jump rope",
    "with a big red ball",
    "on the swings",
    "with their cars",
)
WALK_SEE = (
    "eating a leaf",
    "sleeping in the sun",
    "running after a ball",
    "looking for food",
    "sitting on a log",
    "drinking from a puddle",
    "playing in the grass",
    "hiding behind a tree",
    "chasing a butterfly",
    "playing with a stick",
    "taking a nap",
    "digging a hole",
    "jumping in the mud",
    "rolling in the grass",
)
WALK = (
    "Soon {N} saw {x} {y}.",
    "While they walked, they saw {x} {y}.",
    "{N} and {F} walked past {x} {y}.",
    "As they walked, they saw {x} {y}.",
    "Then {N} saw {x} {y}.",
)
SNACK = (
    "{His} {mom} made {f1} and {f2} for lunch.",
    "They shared {f1} and {f2}.",
    "Then they ate {f1} and {f2}.",
    "{F} brought {f1}, and {N} brought {f2}.",
    "{His} {mom} gave them {f1} and {f2}.",
    "After that, they sat down and ate {f1} and {f2}.",
)
FOODS = (
    "apple",
    "cookie",
    "cake",
    "sandwich",
    "pie",
    "soup",
    "cheese",
    "juice",
    "milk",
    "grapes",
    "bread",
    "pear",
    "muffin",
    "pancake",
    "popcorn",
    "rice",
    "peach",
    "cupcake",
    "honey",
    "toast",
    "carrot",
    "egg",
    "candy",
    "watermelon",
    "cookies",
)
RETRIEVE = (  # the toys scene's end: {n} picks up {p} own toy {t} (the possession probes)
    "Later, {n} wanted to play with {p} own toy again. {n} picked up the {t}.",
    "Before going home, {n} picked up the {t}.",
    "That night, {n} hugged the {t} and went to sleep.",
)
