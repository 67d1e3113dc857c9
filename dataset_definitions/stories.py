"""Built-in corpus: seeded, procedurally generated children's stories in the TinyStories style.

Each story is a pure function of (seed, index): no download, no files, and any run can rebuild
exactly the rows it trained on. A story is one of a few plot templates (lost and found, sharing,
a friend who helps, a trip, a fear overcome, a surprise, a race, a rainy day, telling the truth)
filled from small word lists. The vocabulary stays small, so a tiny model's loss falls quickly,
while the choices multiply into far more distinct stories than a training run asks for.

Example:
    >>> from dataset_definitions.stories import story, stories
    >>> story(seed=0, index=0).split(". ")[0]     # paragraphs are separated by a single "\\n"
    'Once upon a time, in a small town, there lived a brave owl named Daisy'
    >>> rows = list(stories(1000, seed=0))       # stories 0..999 of corpus 0
"""

import random
from typing import Iterator, NamedTuple

# ---------------------------------------------------------------------------------------------
# Word lists. Avoid nouns that take "an" despite a consonant sound, or "a" despite a vowel
# ("hour", "unicorn", "one"): articles are chosen by first letter.

GIRLS = ("Lily", "Mia", "Sue", "Anna", "Emma", "Lucy", "Sara", "Amy", "Zoe", "Ella", "Kate", "Jane",
         "Rose", "Ruby", "Molly", "Lola", "Nora", "Ivy", "Maya", "Grace")
BOYS = ("Tom", "Ben", "Sam", "Leo", "Jack", "Tim", "Joe", "Finn", "Jake", "Noah", "Luke", "Oscar",
        "Eli", "Adam", "Ollie", "Ryan", "Owen", "Dan", "Henry", "Bob")
PET_GIRLS = ("Daisy", "Bella", "Coco", "Luna", "Rosie", "Penny", "Polly", "Fifi", "Honey", "Dotty")
PET_BOYS = ("Max", "Rex", "Buddy", "Spot", "Milo", "Toby", "Pip", "Rocky", "Bolt", "Ziggy")
ANIMALS = ("dog", "cat", "bird", "rabbit", "dragon", "bear", "fox", "duck", "frog", "mouse", "owl",
           "elephant", "squirrel", "turtle", "puppy", "kitten", "pig", "lamb")
FLYERS = ("bird", "dragon", "duck", "owl")           # reach high places by flying
CLIMBERS = ("girl", "boy", "cat", "bear", "mouse", "squirrel", "kitten")
KID_ADJECTIVES = ("little", "kind", "happy", "curious", "brave", "shy", "cheerful", "clever")
ANIMAL_ADJECTIVES = KID_ADJECTIVES + ("old", "gentle", "playful", "friendly", "small", "funny")
HOBBIES = ("play outside", "run and jump", "sing songs", "look at the clouds", "draw pictures",
           "dance in the sun", "read books", "build things with blocks", "play games", "pick flowers",
           "splash in puddles", "help others")
THINGS = ("red ball", "blue ball", "kite", "orange kite", "red hat", "yellow hat", "toy car", "toy boat",
          "teddy bear", "little box", "shiny rock", "drum", "doll", "toy train", "blue scarf",
          "old blanket", "wooden horse", "green bucket", "silver bell", "picture book")
FOODS = ("apple", "banana", "orange", "sandwich", "cookie", "peach", "pear", "muffin", "egg", "plum")
DAYS = ("One day", "One sunny day", "One morning", "One warm afternoon", "One bright morning",
        "One summer day", "On a sunny afternoon", "One fine day")
HAPPY = ("happy", "glad", "very happy", "so happy")
SAD = ("sad", "very sad", "upset", "unhappy")
HIGH = ("in a tall tree", "on the roof of a shed", "on top of a high wall", "on a high branch")
RACE_GOALS = ("the big tree", "the old fence", "the red gate", "the end of the path", "the big rock")
GIFTS = (("made a card with a big red heart on it", "card"), ("drew a picture of the two of them", "picture"),
         ("baked a small cake with {a_his} {p}", "cake"), ("made a necklace out of shells", "necklace"),
         ("painted a little rock blue", "blue rock"), ("made a paper crown", "paper crown"))
GAMES = (("build a fort out of pillows", "built a fort out of pillows"),
         ("bake cookies in the kitchen", "baked cookies in the kitchen"),
         ("draw pictures of the sun", "drew pictures of the sun"), ("play hide and seek", "played hide and seek"),
         ("read a book about dragons", "read a book about dragons"), ("make a puppet show", "made a puppet show"))

# Per place: what one sees there, what one does there, where a lost thing can be, and a fear
# (what scares, what the brave try is, how it turns out) that fits the place.
PLACES = {
    "park": (("pretty flowers", "a big pond", "ducks", "tall trees"),
             ("fed the ducks", "played on the swings", "rolled down the grass"),
             ("under a bench", "behind a tree", "near the pond", "in the tall grass"),
             (("the big slide", "climbed up and slid all the way down", "It was fast and fun!"),
              ("the old bridge", "walked across the old bridge", "The bridge was strong and safe."))),
    "forest": (("tall trees", "red mushrooms", "a busy squirrel", "pretty flowers"),
               ("picked up pine cones", "walked along a little path", "listened to the birds"),
               ("under a bush", "behind a tree", "next to a log", "in a pile of leaves"),
               (("the dark woods", "walked down the path between the trees", "The woods were quiet and pretty."),)),
    "beach": (("big waves", "pretty shells", "a little crab", "white birds"),
              ("built a sand castle", "looked for shells", "splashed in the water"),
              ("in the sand", "behind a big rock", "near the water", "under a towel"),
              (("the big waves", "ran into the small waves near the sand", "The water was cool and fun."),)),
    "garden": (("pretty flowers", "a fat bee", "red tomatoes", "a little snail"),
               ("watered the flowers", "planted some seeds", "looked for bugs"),
               ("under a big leaf", "behind the flowers", "next to the fence", "in the tall grass"),
               (("the buzzing bees", "stood still and watched the bees",
                 "The bees just flew from flower to flower."),)),
    "farm": (("cows", "a big red barn", "little pigs", "a tall horse"),
             ("fed the hens", "rode on a big tractor", "picked apples"),
             ("in the hay", "behind the barn", "next to the fence", "under a cart"),
             (("the big horse", "reached out and patted the horse", "The horse was soft and gentle."),)),
    "lake": (("ducks", "little fish", "a small boat", "green frogs"),
             ("threw stones into the water", "sat on the dock", "went for a ride in a boat"),
             ("under the dock", "behind a big rock", "near the water", "in the reeds"),
             (("the deep water", "stepped into the water and began to swim", "The water was cool and fun."),)),
    "zoo": (("a tall giraffe", "a big elephant", "funny monkeys", "a sleepy lion"),
            ("watched the monkeys swing", "fed the goats", "looked at the penguins"),
            ("under a bench", "next to the gate", "behind a bush", "near the fence"),
            (("the big lion", "walked up close and looked at the lion",
              "The lion just yawned and went to sleep."),)),
    "school": (("big windows", "a class pet fish", "colorful books", "a tall slide"),
               ("read a story", "painted pictures", "played tag"),
               ("under a desk", "behind the door", "in the toy box", "next to the window"),
               (("the tall slide", "climbed up and slid all the way down", "It was fast and fun!"),)),
}

# ---------------------------------------------------------------------------------------------
# Plots: paragraphs of slots; each slot is a tuple of alternative sentences, "" = skip the slot.
# Fields: A/B (hero/friend), a_he, a_him, a_his, a_self (and A_he, A_his capitalised, same for b),
# place, thing, p (mom or dad), Day, happy, sad, and the plot's own fields filled in _fields.

INTRO = (
    ("Once upon a time, there was {a_desc}.", "Once upon a time, in a small town, there lived {a_desc}.",
     "There was once {a_desc}.", "Long ago, there was {a_desc}.",
     "In a little house by the {place}, there lived {a_desc}."),
    ("{A_he} loved to {hobby}.", "{A_he} liked to {hobby} every day.", "Most of all, {A} loved to {hobby}.", ""),
    ("{A} had a best friend, {b_desc}.", "{A_his} best friend was {b_desc}.", "{A} had a good friend, {b_desc}."),
)

LOST = (
    (("{Day}, {A} took {a_his} {thing} to the {place}.",
      "{Day}, {A} and {B} went to the {place}. {A} brought {a_his} {thing}."),
     ("{A_he} played with it all morning.", "{A} and {B} played with it in the sun.",
      "{A} and {B} {doing} and had fun."),
     ("When it was time to go home, the {thing} was gone!", "Then {A} looked down. The {thing} was gone!")),
    (("{A} felt {sad}.", "{A} was {sad} and began to cry.", "{A} felt {sad} and wanted to cry."),
     ('"Where is my {thing}?" asked {A}.', '"Oh no! I lost my {thing}!" said {A}.'),
     ('"Do not worry," said {B}. "I will help you find it."',
      '{B} said, "Do not be sad. We can look for it together."')),
    (("They looked {spot1}, but it was not there.", "First they looked {spot1}. Nothing was there."),
     ("Then they looked {spot2}.", "Next, they looked {spot2}, but they did not find it.", ""),
     ("At last, {B} found the {thing} {spot3}!", "Suddenly, {B} saw something {spot3}. It was the {thing}!")),
    (('"Thank you, {B}!" said {A}. {A_he} gave {B} a big hug.',
      '{A} was {happy}. "You are the best friend ever!" {a_he} said.'),
     ("From that day on, {A} always kept {a_his} {thing} close.", "{A} learned that friends help each other.",
      "Friends are always there when you need them.")),
)

SHARING = (
    (("{Day}, {A} got a new {thing}.", "{Day}, {a_his} {p} gave {A} a new {thing}."),
     ("{A_he} loved it very much.", "It was the best thing {A} had ever had.", ""),
     ("{A_he} took it to the {place} to play.", "{A_he} took it to the {place} to show {B}.")),
    (('{B} saw the {thing} and smiled. "Can I play with your {thing}?" asked {B}.',
      '"What a nice {thing}!" said {B}. "Can I play with it too?"'),
     ('"No, it is mine," said {A}. {A_he} held the {thing} close.',
      '{A} shook {a_his} head. "No. It is my {thing}," {a_he} said.'),
     ("{B} looked {sad} and sat down alone.", "{B} felt {sad} and walked away slowly.")),
    (("{A} looked at {B}. {A_he} did not feel good inside.",
      "Soon {A} did not feel happy anymore. Playing alone was no fun."),
     ('{A} walked over to {B}. "I am sorry," {a_he} said. "Let us play with it together."',
      '{A} ran to {B}. "Here, you can have a turn," {a_he} said.'),
     ("{B} smiled a big smile.", "{B} jumped up with joy.", "")),
    (("They played with the {thing} all day long.", "They took turns with the {thing}, and then they {doing}."),
     ("{A} learned that sharing makes everyone happy.", "From that day on, {A} always shared with {a_his} friends.",
      "Sharing is caring, and it made the day more fun.")),
)

HELPER = (
    (("{Day}, {A} was playing with {a_his} {thing} {at_place}.",
      "{Day}, {A} went to the {place} to play with {a_his} {thing}."),
     ("{A_he} threw it up high, and it landed {high}.", "A big wind came and blew it away. It landed {high}."),
     ("The {thing} was stuck!", "Oh no! The {thing} was stuck up there.")),
    (("{A} tried to reach it, but it was too high.", "{A} jumped and jumped, but {a_he} could not reach it."),
     ("{A_he} felt {sad}.", "{A_he} sat down and felt {sad}.", ""),
     ('Just then, {B} came by. "What is wrong?" asked {B}.',
      '{B} saw {A} and came over. "Why are you sad?" {b_he} asked.'),
     ('{A} pointed up. "My {thing} is stuck," {a_he} said.', '"My {thing} is stuck {high}," said {A}.')),
    (('"I can help!" said {B}.', '"Do not worry. I will get it," said {B}.'),
     ("{B} {reach} and got the {thing} down.", "{B} {reach}. {B_he} grabbed the {thing} and brought it back."),
     ("{A} was {happy}.", "{A} clapped and smiled.")),
    (('"Thank you, {B}!" said {A}. "You are a good friend."',
      '{A} hugged {B}. "Thank you for helping me," {a_he} said.'),
     ("{A} learned that a good friend is always ready to help.", "Good friends always help each other.", "")),
)

TRIP = (
    (("{Day}, {a_his} {p} took {A} and {B} to the {place}.",
      "{Day}, {A} and {B} went on a trip to the {place} with {a_his} {p}."),
     ("{A} was so excited!", "{A} could not wait to get there.",
      '"Hooray!" said {A}. "We are going to the {place}!"')),
    (("They saw {sight1} {at_place}. They also saw {sight2}.", "They saw {sight1} and {sight2}."),
     ('"Look at that!" said {B}.', '"Wow!" said {A}. "This place is so much fun!"', ""),
     ("Then they {doing}.", "After that, they {doing}.")),
    (("Soon they were hungry.", "At lunch time, they sat down on a blanket."),
     ("{A_his} {p} gave each of them {a_food}.", "They shared {a_food} and some water."),
     ("It was yummy.", "{A} said it was the best {food} ever.", "")),
    (("When the sun went down, they went home.", "At the end of the day, it was time to go home."),
     ("{A} was tired but {happy}.", "{A} fell asleep on the way home.", ""),
     ('"Can we come back tomorrow?" asked {A}.', "It was the best trip ever.", "{A} would never forget that day.")),
)

FEAR = (
    (("{Day}, {A} and {B} went to the {place}.", "{Day}, {A} went to the {place} with {B}."),
     ("{A} was scared of {fear}.", "But {A} was afraid of {fear}."),
     ("{A_he} stayed back and did not want to go.", "{A_he} hid behind {B} and did not move.")),
    (('"What is wrong?" asked {B}.', "{B} saw that {A} was scared."),
     ('"I am scared," said {A} in a small voice.', '{A} said, "I do not want to go. I am scared."'),
     ('"It is okay to be scared," said {B}. "I will stay with you."',
      '{B} stood next to {A}. "We can do it together," {b_he} said.')),
    (("{A} took a deep breath. Then {a_he} {fear_try}.", "{A} counted to three. Then {a_he} {fear_try}."),
     ("{fear_end}",),
     ('"I did it!" shouted {A}.', '{A} laughed. "That was not scary at all!" {a_he} said.')),
    (("{A} felt brave and {happy}.", "{A} was proud of {a_self}.", ""),
     ("{A} learned that being brave is easier with a friend.",
      "From that day on, {A} was not scared of {fear} anymore.")),
)

SURPRISE = (
    (("{Day}, {A} remembered that it was {B}'s birthday.", "{Day}, {A} woke up early. It was {B}'s birthday!"),
     ("{A} wanted to give {B} a surprise.", "{A_he} wanted to make {B} feel special.")),
    (("So {A} {gift_make}.", "{A} {gift_make}."),
     ("It took a long time, but {a_he} did not give up.", "{A_he} worked hard all morning.", ""),
     ("Then {a_he} put the {gift} in a box with a big bow.", "When it was ready, {a_he} put it in a pretty box.")),
    (("In the afternoon, {A} went to see {B} {at_place}.", "Then {A} went to {B}'s house and knocked on the door."),
     ('"Surprise! Happy birthday!" shouted {A}.', '"Happy birthday, {B}!" said {A}. "This is for you."'),
     ("{B} opened the box and saw the {gift}.", "{B} looked at the {gift} and smiled a big smile.")),
    (('"Thank you, {A}! I love it!" said {B}.',
      '"This is the best gift ever," said {B}, and {b_he} gave {A} a big hug.'),
     ("{A} learned that giving makes you feel happy too.", "They played together until it was dark.",
      "It was a happy birthday for both of them.")),
)

RACE = (
    (("{Day}, {A} and {B} were playing {at_place}.", "{Day}, {A} and {B} went to the {place} to play."),
     ('"Let us have a race!" said {B}. "The first one to reach {goal} wins."',
      '{A} said, "I can run faster than you! Let us race to {goal}."'),
     ("They stood side by side and got ready.", "")),
    (('"Ready, set, go!" shouted {B}.', '"One, two, three, go!" said {A}.'),
     ("They ran as fast as they could.", "Off they went, running fast."),
     ("{A} was in front, but then {a_he} tripped on a rock and fell down.",
      "Halfway there, {A} tripped over a stick and fell.")),
    (("{A_his} knee hurt, and {a_he} began to cry.", "{A} sat on the ground. {A_his} knee hurt."),
     ("{B} could have won the race, but {b_he} stopped.", "{B} saw {A} fall and ran back."),
     ('"Are you okay?" asked {B}. {B_he} helped {A} get up.',
      '{B} helped {A} stand up. "Lean on me," {b_he} said.')),
    (("Then they walked to {goal} together.", "Side by side, they walked the rest of the way."),
     ('"We both won," said {B} with a smile.', ""),
     ("{A} learned that a good friend matters more than winning.", "Being kind is better than being first.")),
)

RAINY = (
    (("One morning, {A} looked out the window. It was raining.", "One day, it rained and rained all morning."),
     ("{A} wanted to go to the {place} and play with {a_his} {thing}.", "{A} could not go to the {place} to play."),
     ("{A_he} felt {sad}.", '"I do not like the rain," {a_he} said with a sigh.')),
    (('{A_his} {p} had an idea. "Let us {game}," {p_he} said.',
      '"Do not be sad," said {a_his} {p}. "We can {game}."'),
     ("Soon {B} came over, and they all {game_did} together.", "When {B} came over, they {game_did} together."),
     ("It was so much fun that {A} forgot all about the rain.", "They laughed and had a great time.")),
    (("After a while, the rain stopped.", "Later, the sun came out."),
     ("There was a big rainbow in the sky!", "The sky was blue again, and the grass was wet and shiny.", ""),
     ("{A} and {B} ran outside and jumped in the puddles.", "{A} and {B} ran to the {place} to play.")),
    (("{A} learned that a rainy day can be fun too.",
      "Rainy days are not so bad when you have a friend to play with."),),
)

TRUTH = (
    (("{Day}, {A} went to {B}'s house to play.", "{Day}, {B} came to play with {A} {at_place}."),
     ("{B} had {a_thing}. It was {b_his} favorite thing.", "{B} had {a_thing}. {B} loved it very much."),
     ("{A} wanted to play with it too.", "")),
    (("When {B} was not looking, {A} took the {thing}.", "{A} took the {thing} without asking."),
     ("{A_he} played with it, but then it fell into the mud!",
      "{A_he} ran with it, tripped, and dropped it in the mud."),
     ("Now the {thing} was all dirty. {A} felt bad.", "The {thing} was dirty and wet. {A} felt very bad.")),
    (("{A} wanted to hide it, but {a_he} knew that was wrong.",
      "At first {A} wanted to hide it, but {a_he} did not."),
     ('{A_he} went to {B} and said, "I am sorry. I took your {thing}, and now it is dirty."',
      '"I am sorry, {B}," said {A}. "I took your {thing} and made it dirty."'),
     ("{B} was {sad} for a moment.", ""),
     ('Then {B} said, "Thank you for telling me the truth."',
      '"It is okay," said {B}. "Thank you for telling me."')),
    (("Together, they washed the {thing} with soap and water.", "They cleaned the {thing} together."),
     ("Soon it was as good as new.", "Soon it was clean again.", ""),
     ("{A} learned that it is always best to tell the truth.", "Telling the truth is always the right thing.")),
)

OUTDOORS = ("park", "forest", "beach", "garden", "farm", "lake")
# Plot name -> (places it can happen in, paragraphs after the intro).
PLOTS = {
    "lost": (OUTDOORS + ("school", "zoo"), LOST),
    "sharing": (OUTDOORS + ("school",), SHARING),
    "helper": (("park", "garden", "farm", "forest", "school"), HELPER),
    "trip": (OUTDOORS + ("zoo",), TRIP),
    "fear": (tuple(PLACES), FEAR),
    "surprise": (OUTDOORS, SURPRISE),
    "race": (("park", "garden", "farm", "forest", "school"), RACE),
    "rainy": (OUTDOORS, RAINY),
    "truth": (OUTDOORS, TRUTH),
}

# ---------------------------------------------------------------------------------------------
# Generation


class Character(NamedTuple):
    name: str
    kind: str  # "girl", "boy" or an animal
    he: str    # subject pronoun
    him: str   # object pronoun
    his: str   # possessive


def _with_a(phrase: str) -> str:
    """Phrase with its indefinite article; our nouns all follow the first-letter rule."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


# Only rng.random() is used to draw: Python promises its sequence for a given seed across versions,
# but not that of choice() or sample(), and the corpus must not change under a Python upgrade.
def _pick(rng: random.Random, seq: tuple):
    """One element of seq, uniformly."""
    return seq[int(rng.random() * len(seq))]


def _pick_distinct(rng: random.Random, seq: tuple, k: int) -> list:
    """k different elements of seq, in random order."""
    pool = list(seq)
    return [pool.pop(int(rng.random() * len(pool))) for _ in range(k)]


def _character(rng: random.Random, avoid: str = "", can_fly: bool = True) -> Character:
    """A random named character; the name list fixes the pronouns, so they always agree."""
    while True:
        r = rng.random()
        if r < 0.3:
            c = Character(_pick(rng, GIRLS), "girl", "she", "her", "her")
        elif r < 0.6:
            c = Character(_pick(rng, BOYS), "boy", "he", "him", "his")
        elif r < 0.8:
            c = Character(_pick(rng, PET_GIRLS), _pick(rng, ANIMALS), "she", "her", "her")
        else:
            c = Character(_pick(rng, PET_BOYS), _pick(rng, ANIMALS), "he", "him", "his")
        if c.name != avoid and (can_fly or c.kind not in FLYERS):
            return c


def _reach(c: Character) -> str:
    """How c gets a thing down from up high: flying, climbing, or with a stick."""
    if c.kind in FLYERS:
        return "flew up high"
    if c.kind in CLIMBERS:
        return "climbed up carefully"
    return "found a long stick and reached up high"


def _character_fields(rng: random.Random, key: str, c: Character) -> dict:
    """Name, pronouns and description of c under keys A, a_he, A_he, ... (key "a") or B, b_he, ..."""
    adjective = _pick(rng, KID_ADJECTIVES if c.kind in ("girl", "boy") else ANIMAL_ADJECTIVES)
    return {
        key.upper(): c.name, f"{key}_he": c.he, f"{key}_him": c.him, f"{key}_his": c.his,
        f"{key.upper()}_he": c.he.capitalize(), f"{key.upper()}_his": c.his.capitalize(),
        f"{key}_self": c.him + "self", f"{key}_desc": f"{_with_a(adjective + ' ' + c.kind)} named {c.name}",
    }


def _fields(rng: random.Random, place: str, a: Character, b: Character) -> dict:
    """Every field a template may name, drawn once so the whole story stays consistent."""
    sights, doings, spots, fears = PLACES[place]
    sight1, sight2 = _pick_distinct(rng, sights, 2)
    spot1, spot2, spot3 = _pick_distinct(rng, spots, 3)
    fear, fear_try, fear_end = _pick(rng, fears)
    gift_make, gift = _pick(rng, GIFTS)
    game, game_did = _pick(rng, GAMES)
    thing, food = _pick(rng, THINGS), _pick(rng, FOODS)
    p, p_he = _pick(rng, (("mom", "she"), ("dad", "he")))
    f = {"place": place, "at_place": ("in the " if place in ("forest", "garden") else "at the ") + place,
         "Day": _pick(rng, DAYS), "happy": _pick(rng, HAPPY), "sad": _pick(rng, SAD),
         "hobby": _pick(rng, HOBBIES), "thing": thing, "a_thing": _with_a(thing), "food": food,
         "a_food": _with_a(food), "p": p, "p_he": p_he, "sight1": sight1, "sight2": sight2,
         "doing": _pick(rng, doings), "spot1": spot1, "spot2": spot2, "spot3": spot3, "fear": fear,
         "fear_try": fear_try, "fear_end": fear_end, "gift": gift, "game": game, "game_did": game_did,
         "high": _pick(rng, HIGH), "goal": _pick(rng, RACE_GOALS), "reach": _reach(b)}
    f |= _character_fields(rng, "a", a) | _character_fields(rng, "b", b)
    f["gift_make"] = gift_make.format_map(f)  # the cake is baked with the hero's own mom or dad
    return f


def _render(rng: random.Random, paragraphs: tuple, f: dict) -> str:
    """One alternative per slot, filled in; sentences joined by spaces, paragraphs by newlines."""
    out = []
    for slots in paragraphs:
        sentences = (_pick(rng, alternatives) for alternatives in slots)
        out.append(" ".join(s.format_map(f) for s in sentences if s))
    return "\n".join(out)


def story(seed: int, index: int) -> str:
    """Story number `index` of the corpus with seed `seed`.

    Args:
        seed: corpus seed; different seeds give different corpora.
        index: position in the corpus, any int.
    Returns:
        The story: plain ASCII, paragraphs separated by a single "\\n", about 60-200 words.
    """
    # A str seed is hashed with SHA-512 by random.Random (not the salted hash()), so the story is
    # the same on every machine and run, and distinct (seed, index) pairs get unrelated streams.
    rng = random.Random(f"stories/{seed}/{index}")
    places, plot = PLOTS[_pick(rng, tuple(PLOTS))]
    a = _character(rng, can_fly=plot is not HELPER)  # a hero who flies needs no help getting down a kite
    b = _character(rng, avoid=a.name)
    f = _fields(rng, _pick(rng, places), a, b)
    return _render(rng, (INTRO,) + plot, f)


def stories(n: int, seed: int = 0, start: int = 0) -> Iterator[str]:
    """Stories start .. start+n-1 of the corpus with seed `seed`."""
    for index in range(start, start + n):
        yield story(seed, index)
