"""Word lists and English inflection for the sentence generator (most_jax.corpus.sentences).

Every word is lowercase ASCII (apostrophes allowed) so that eSpeak reads it and WER normalisation
is a plain whitespace split. Lists are whitespace-separated strings; a verb written `base!` doubles
its final consonant (stop -> stopped, stopping) and `base/past/participle` gives irregular forms.
"""

from __future__ import annotations

import dataclasses


def _words(text: str) -> tuple[str, ...]:
    """Whitespace-separated entries, de-duplicated in order (a repeated word would be drawn twice as often)."""
    return tuple(dict.fromkeys(text.split()))


# ---- nouns, by kind; the kind decides which verbs and adjectives fit -------------------------------

NOUNS: dict[str, tuple[str, ...]] = {
    "animal": _words("""
        dog cat horse cow pig sheep goat chicken duck goose rabbit mouse rat fox wolf bear lion tiger
        elephant giraffe zebra monkey gorilla kangaroo koala panda camel deer moose squirrel owl eagle
        hawk parrot pigeon crow swan penguin dolphin whale shark fish frog toad snake lizard turtle
        crocodile spider bee ant butterfly beetle mosquito snail worm bat hedgehog badger otter beaver
        seal walrus hippo rhino leopard cheetah donkey mule pony puppy kitten calf lamb hamster goldfish
        crab lobster octopus flamingo ostrich peacock robin sparrow falcon buffalo llama raccoon skunk
        bull rooster hen heron stork seagull wasp ladybird caterpillar moth salmon trout dragon unicorn
    """),
    "person": _words("""
        man woman boy girl child baby friend teacher doctor nurse farmer driver pilot cook chef baker
        butcher artist painter singer dancer writer poet actor student neighbor lawyer judge officer
        soldier sailor captain king queen prince princess waiter manager worker engineer scientist
        dentist plumber carpenter mechanic gardener fisherman hunter musician photographer reporter
        banker clerk guard guide tourist stranger visitor guest customer player coach referee champion
        president mayor professor librarian secretary cashier tailor barber firefighter astronaut
        detective thief prisoner priest uncle aunt cousin nephew niece grandmother grandfather mother
        father brother sister son daughter husband wife parent wizard giant lady gentleman teenager
        boss partner colleague classmate roommate owner landlord tenant passenger pianist violinist
        drummer athlete runner swimmer climber sculptor architect designer programmer nanny babysitter
        shepherd miner jeweler florist pharmacist surgeon vet postman grocer merchant inventor explorer
    """),
    "food": _words("""
        apple banana orange pear peach plum cherry grape lemon lime mango melon pineapple strawberry
        blueberry raspberry coconut apricot potato tomato carrot onion pepper cucumber lettuce cabbage
        pumpkin bean pea mushroom olive nut almond peanut walnut cake cookie biscuit pie sandwich burger
        pizza sausage egg cupcake muffin pancake waffle doughnut pretzel cracker bagel croissant taco
        dumpling noodle radish turnip avocado tart lollipop steak omelet pickle meatball chocolate
        candy sweet onion melon kiwi fig date berry
    """),
    "thing": _words("""
        box bag cup mug glass plate bowl spoon fork knife pan pot kettle bottle jar basket bucket brush
        comb mirror lamp candle clock watch key lock door window chair table desk bed sofa couch shelf
        cupboard drawer carpet rug curtain pillow blanket towel umbrella hat cap coat jacket shirt dress
        skirt sock shoe boot glove scarf belt ring necklace bracelet button pencil pen crayon eraser
        ruler notebook envelope stamp ticket coin wallet purse suitcase backpack camera phone computer
        laptop tablet radio television screen keyboard battery cable charger printer toy doll ball
        kite balloon puzzle robot hammer saw drill screwdriver nail screw rope ladder shovel rake hose
        wheel tire fence gate bench statue painting picture photo poster flag medal trophy bell whistle
        fridge oven stove microwave sink heater fan sponge soap tissue toothbrush broom vase jug tray
        napkin needle tent helmet sweater uniform apron costume mask sandal slipper present parcel
        bucket chain hook magnet lantern torch compass telescope globe calendar pillow mattress cushion
        teapot saucer ladle whisk sieve blender toaster kettle closet wardrobe mailbox doorbell
    """),
    "vehicle": _words("""
        car bus truck van taxi train tram bicycle bike motorcycle scooter boat ship yacht canoe plane
        helicopter rocket tractor ambulance wagon cart sled submarine jeep ferry
    """),
    "readable": _words("""
        book letter newspaper magazine story poem report menu map email note message novel diary recipe
        article essay list card postcard script contract receipt textbook dictionary label guidebook
        invitation comic timetable
    """),
    "place": _words("""
        house garden school library museum hospital station airport hotel restaurant cafe bank shop
        store market office factory farm church castle palace theater cinema stadium park beach forest
        lake river mountain hill valley island village city town street bridge tower harbor kitchen
        bedroom bathroom garage cellar attic basement balcony hall classroom playground zoo bakery
        pharmacy gym pool studio laboratory temple cave desert field meadow jungle camp cottage barn
        apartment supermarket university college prison courtyard lighthouse mill square
    """),
    "instrument": _words("""
        guitar piano violin drum flute trumpet harp cello saxophone clarinet trombone harmonica
        accordion banjo ukulele organ tuba
    """),
    "idea": _words("""
        idea plan question answer problem reason secret dream joke promise mistake lesson decision
        choice chance rule goal habit memory opinion song game story puzzle riddle mystery theory
        puzzle plan speech
    """),
}

# Uncountable nouns: no plural, no "a".
MASS_NOUNS: dict[str, tuple[str, ...]] = {
    "food": _words("""
        rice milk water coffee tea juice sugar salt flour honey jam bread cheese butter soup pasta cereal
        yogurt cream meat lemonade oil vinegar sauce ketchup mustard popcorn spinach garlic ginger
        cinnamon toast bacon ham beef pork broccoli corn lettuce
    """),
    "thing": _words("""
        money furniture paper wood glass sand clay wool cotton silk string tape glue paint ink luggage
        equipment jewelry
    """),
    "idea": _words("homework music information advice news work history science math art"),
}

# Plurals that the spelling rules in `plural` would get wrong.
IRREGULAR_PLURALS = {
    "man": "men", "woman": "women", "child": "children", "mouse": "mice", "goose": "geese",
    "sheep": "sheep", "fish": "fish", "deer": "deer", "moose": "moose", "salmon": "salmon",
    "trout": "trout", "buffalo": "buffaloes", "knife": "knives", "wife": "wives", "shelf": "shelves",
    "calf": "calves", "wolf": "wolves", "leaf": "leaves", "potato": "potatoes", "tomato": "tomatoes",
    "fisherman": "fishermen", "postman": "postmen", "gentleman": "gentlemen", "person": "people",
    "foot": "feet", "tooth": "teeth", "photo": "photos", "piano": "pianos", "radio": "radios",
    "hippo": "hippos", "rhino": "rhinos", "taco": "tacos", "banjo": "banjos", "cello": "cellos",
    "volcano": "volcanoes", "hero": "heroes", "mango": "mangoes", "studio": "studios", "zoo": "zoos",
    "kangaroo": "kangaroos", "avocado": "avocados", "tuba": "tubas", "bus": "buses", "quiz": "quizzes",
}

# ---- verbs --------------------------------------------------------------------------------------

# Transitive verbs, by the noun kinds they take as object.
TRANSITIVE: dict[str, tuple[str, ...]] = {
    "any": _words("""
        see/saw/seen find/found/found like love hate want need buy/bought/bought sell/sold/sold
        bring/brought/brought take/took/taken carry lose/lost/lost hold/held/held keep/kept/kept
        show/showed/shown watch notice remember forget!/forgot/forgotten describe photograph draw/drew/drawn
        paint choose/chose/chosen hide/hid/hidden mention imagine prefer! recognize discover
        examine ignore admire miss count compare
    """),
    "animal": _words("""
        feed/fed/fed chase follow catch/caught/caught pet! wash train brush frighten scare rescue
        hear/heard/heard touch tame
    """),
    "person": _words("""
        call help meet/met/met visit follow greet teach/taught/taught thank invite ask pay/paid/paid
        hug! kiss wake/woke/woken trust hear/heard/heard warn interview hire thank phone text marry
        recognize congratulate understand/understood/understood introduce email blame forgive/forgave/forgiven
        annoy surprise
    """),
    "food": _words("""
        eat/ate/eaten cook bake taste boil fry slice chop! peel serve order share smell grow/grew/grown
        pick wash cut!/cut/cut mix freeze/froze/frozen heat warm roast finish deliver steal/stole/stolen
        drop! weigh
    """),
    "thing": _words("""
        fix break/broke/broken open close clean wash move drop! throw/threw/thrown push pull borrow
        lend/lent/lent build/built/built make/made/made use wrap! hide/hid/hidden check repair fold hang/hung/hung
        lift polish steal/stole/stolen deliver pack unpack return replace find/found/found order drag!
        shake/shook/shaken kick pick fill empty test design decorate sell/sold/sold dry
    """),
    "vehicle": _words("""
        drive/drove/driven ride/rode/ridden park wash fix steer rent catch/caught/caught miss stop! repair
        paint board crash load unload
    """),
    "readable": _words("""
        read/read/read write/wrote/written print send/sent/sent sign finish translate publish edit copy
        open check answer receive forward post deliver study correct tear/tore/torn burn
    """),
    "place": _words("""
        visit leave/left/left enter clean build/built/built paint explore reach search guard paint
        decorate sweep/swept/swept leave/left/left rebuild/rebuilt/rebuilt photograph cross approach
    """),
    "instrument": _words("play tune practice carry borrow tune repair polish"),
    "idea": _words("""
        explain solve discuss remember forget!/forgot/forgotten share understand/understood/understood
        keep/kept/kept change make/made/made learn teach/taught/taught guess tell/told/told
        repeat sing/sang/sung write/wrote/written
    """),
}

INTRANSITIVE = _words("""
    sleep/slept/slept laugh cry smile run!/ran/run walk swim!/swam/swum dance sing/sang/sung arrive
    leave/left/left wait work travel jump fall/fell/fallen sit!/sat/sat stand/stood/stood rest shout
    whisper cough sneeze yawn breathe hurry relax listen return disappear appear fly/flew/flown climb
    hide/hid/hidden play shiver complain agree disagree win!/won/won lose/lost/lost study cheer
    kneel/knelt/knelt bow wave nod! sweat blink stay wander skate ski sail dive/dove/dived fight/fought/fought
    celebrate pray queue improve begin!/began/begun continue change grow/grew/grown shine/shone/shone
""")

# Verbs taking a `to` infinitive.
INFINITIVE_TAKERS = _words("""
    want need try decide forget!/forgot/forgotten remember hope plan! promise refuse
    agree learn begin!/began/begun start love like hate prefer! offer choose/chose/chosen manage
""")

# Verbs of giving/telling that take two objects ("gave mary a book").
DITRANSITIVE = _words("""
    give/gave/given send/sent/sent show/showed/shown bring/brought/brought lend/lent/lent
    sell/sold/sold offer hand pass throw/threw/thrown buy/bought/bought
""")

# ---- adjectives, by the noun kinds they fit ----------------------------------------------------------

ADJECTIVES: dict[str, tuple[str, ...]] = {
    "any": _words("""
        big small large tiny huge little tall short long heavy light red blue green yellow orange purple
        pink brown black white grey golden silver old new young strange beautiful ugly pretty lovely
        nice good bad wonderful terrible famous ordinary unusual special favorite perfect lonely
        mysterious dirty clean wet dry
    """),
    "animal": _words("""
        fast slow quick hungry thirsty tired sleepy wild tame fierce gentle friendly noisy quiet lazy
        playful clever fluffy furry spotted striped curious shy brave scared angry happy sick healthy
        strong weak fat thin
    """),
    "person": _words("""
        happy sad angry tired hungry thirsty brave shy clever smart kind friendly lazy proud calm nervous
        lucky careful careless polite rude honest gentle funny serious busy rich poor strong weak
        cheerful grumpy patient generous selfish foolish wise quiet noisy excited worried bored curious
        handsome elegant famous healthy sick sleepy
    """),
    "food": _words("""
        hot cold warm fresh stale sweet sour bitter salty spicy delicious tasty juicy ripe raw crunchy
        soft hard frozen burnt homemade cheap expensive healthy rotten crispy
    """),
    "thing": _words("""
        broken wooden plastic metal cheap expensive heavy light empty full soft hard sharp smooth rough
        flat round square shiny dusty useful useless fragile modern ancient antique tidy messy
        waterproof electric cotton leather woolen striped spotted bright dark warm cold
    """),
    "vehicle": _words("""
        fast slow noisy quiet expensive cheap modern electric rusty shiny crowded empty comfortable
        broken dusty
    """),
    "readable": _words("""
        long short boring interesting exciting funny sad difficult easy important secret famous
        handwritten printed torn
    """),
    "place": _words("""
        crowded empty quiet noisy busy dark bright warm cold peaceful dangerous safe famous ancient
        modern tidy messy huge tiny beautiful lovely
    """),
    "instrument": _words("old new expensive cheap loud quiet wooden broken golden shiny"),
    "idea": _words("""
        good bad great simple difficult easy strange funny clever silly important serious interesting
        boring secret new old
    """),
}

# Comparatives of the adjectives used in comparisons.
COMPARATIVES = {
    "big": "bigger", "small": "smaller", "tall": "taller", "short": "shorter", "long": "longer",
    "heavy": "heavier", "light": "lighter", "old": "older", "young": "younger", "fast": "faster",
    "slow": "slower", "quick": "quicker", "strong": "stronger", "weak": "weaker", "happy": "happier",
    "clever": "cleverer", "kind": "kinder", "cheap": "cheaper", "warm": "warmer", "cold": "colder",
    "hot": "hotter", "sweet": "sweeter", "loud": "louder", "quiet": "quieter", "busy": "busier",
    "rich": "richer", "poor": "poorer", "brave": "braver", "wise": "wiser", "noisy": "noisier",
    "lazy": "lazier", "good": "better", "bad": "worse", "tiny": "tinier", "huge": "huger", "dark": "darker", "bright": "brighter",
    "clean": "cleaner", "dirty": "dirtier", "fresh": "fresher", "soft": "softer", "hard": "harder",
    "easy": "easier", "funny": "funnier",
}

INTENSIFIERS = _words("very really quite too rather extremely so incredibly fairly pretty")

MANNER_ADVERBS = _words("""
    quickly slowly carefully quietly loudly happily sadly suddenly finally easily gently badly well
    politely angrily nervously calmly proudly patiently bravely secretly eagerly lazily silently
    cheerfully carelessly quietly gracefully clumsily honestly loudly softly smoothly perfectly
    immediately together alone again
""")
FREQUENCY_ADVERBS = _words("usually often always never sometimes rarely seldom normally")

WEATHER_ADJECTIVES = _words("""
    cold warm hot sunny cloudy windy rainy foggy snowy stormy wet dry chilly freezing humid mild
    pleasant beautiful
""")
WEATHER_VERBS = _words("rain snow freeze/froze/frozen")

DAYS = _words("monday tuesday wednesday thursday friday saturday sunday")
MONTHS = _words("january february march april may june july august september october november december")
SEASONS = _words("spring summer autumn winter")
PARTS_OF_DAY = _words("morning afternoon evening night")

# ---- names and places ------------------------------------------------------------------------------

MALE_NAMES = _words("""
    james john robert michael william david richard joseph thomas charles daniel matthew anthony mark
    paul steven andrew kevin brian george edward peter henry jack oliver harry lucas noah liam ethan
    samuel benjamin adam simon victor oscar hugo leo max felix martin carlos diego pablo juan luis
    marco luca hans karl ivan boris omar ali ahmed hassan raj arjun ravi kenji chen tom sam ben joe
    frank arthur albert walter philip patrick sean ryan jason eric alex tony nick fred louis
""")
FEMALE_NAMES = _words("""
    mary patricia jennifer linda elizabeth barbara susan jessica sarah karen nancy lisa betty emily emma
    olivia sophia ava mia isabella charlotte amelia grace chloe lily hannah anna laura julia maria
    elena sofia lucia clara rosa ines paula nina eva alice helen rachel rebecca ruth kate lucy sophie
    zoe amy claire diana fiona irene jane julie lena maya nora sara tina vera yuki mei aisha fatima
    priya margaret dorothy ella martha molly rose jasmine natalie victoria monica
""")
SURNAMES = _words("""
    smith johnson williams brown jones miller davis wilson taylor anderson moore martin jackson white
    harris clark lewis walker hall allen young king wright hill green adams baker nelson carter
    mitchell roberts turner phillips campbell parker evans edwards collins stewart morris murphy cook
    rogers cooper reed bailey bell kelly howard ward cox richardson wood watson brooks bennett gray
    hughes price sanders myers long ross foster
""")
TITLES = _words("mister doctor professor captain detective")

CITIES = _words("""
    london paris rome berlin madrid lisbon dublin vienna prague warsaw athens cairo tokyo beijing
    shanghai delhi mumbai sydney melbourne toronto montreal vancouver chicago boston seattle denver
    dallas houston miami atlanta phoenix detroit moscow istanbul dubai singapore bangkok seoul manila
    jakarta nairobi lagos amsterdam brussels oslo stockholm helsinki copenhagen zurich geneva munich
    milan venice florence naples barcelona seville edinburgh glasgow manchester liverpool bristol
    oxford cambridge budapest krakow hamburg lyon marseille osaka kyoto lima santiago havana
""") + ("new york", "los angeles", "san francisco", "hong kong", "buenos aires", "cape town",
        "rio de janeiro", "new orleans", "las vegas", "mexico city")
COUNTRIES = _words("""
    france germany spain italy portugal ireland scotland england wales norway sweden finland denmark
    poland greece turkey egypt kenya nigeria india china japan korea australia canada mexico brazil
    argentina chile peru colombia russia iceland morocco vietnam thailand austria switzerland belgium
    holland hungary romania ukraine israel jordan iran pakistan nepal indonesia malaysia cuba jamaica
""") + ("new zealand", "south africa")

# ---- numbers ----------------------------------------------------------------------------------------

# Plain splits, not _words: these are indexed by value.
UNITS = tuple("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
               "fifteen sixteen seventeen eighteen nineteen".split())
TENS = tuple("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split())
ORDINAL_UNITS = tuple("zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh "
                       "twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth".split())
ORDINAL_TENS = tuple("_ _ twentieth thirtieth fortieth fiftieth sixtieth seventieth eightieth ninetieth".split())


def number_words(n: int) -> str:
    """Cardinal in words, British style with "and": 342 -> 'three hundred and forty two'."""
    if not 0 <= n < 1_000_000_000:
        raise ValueError(f"number_words supports 0..999999999, got {n}")
    if n < 20:
        return UNITS[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + UNITS[n % 10])
    for size, name in ((1_000_000, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            head, rest = divmod(n, size)
            words = f"{number_words(head)} {name}"
            if rest:
                words += (" and " if rest < 100 else " ") + number_words(rest)
            return words
    raise AssertionError("unreachable")


def ordinal_words(n: int) -> str:
    """Ordinal in words for 1..99: 23 -> 'twenty third'."""
    if not 1 <= n < 100:
        raise ValueError(f"ordinal_words supports 1..99, got {n}")
    if n < 20:
        return ORDINAL_UNITS[n]
    if n % 10 == 0:
        return ORDINAL_TENS[n // 10]
    return f"{TENS[n // 10]} {ORDINAL_UNITS[n % 10]}"


def year_words(year: int) -> str:
    """Years as spoken: 1987 -> 'nineteen eighty seven', 1905 -> 'nineteen oh five',
    2007 -> 'two thousand and seven', 2019 -> 'twenty nineteen'."""
    if not 1100 <= year <= 2099:
        raise ValueError(f"year_words supports 1100..2099, got {year}")
    if 2000 <= year < 2010:
        return number_words(year)
    head, tail = divmod(year, 100)
    if tail == 0:
        return f"{number_words(head)} hundred"
    tail_words = f"oh {UNITS[tail]}" if tail < 10 else number_words(tail)
    return f"{number_words(head)} {tail_words}"


# ---- inflection -------------------------------------------------------------------------------------

_VOWELS = "aeiou"


def _add_s(word: str) -> str:
    """The regular -s ending of plurals and of the present third person."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in _VOWELS:
        return word[:-1] + "ies"
    return word + "s"


def plural(noun: str) -> str:
    return IRREGULAR_PLURALS.get(noun) or _add_s(noun)


def article(word: str) -> str:
    """'a' or 'an' by the sound of the next word's spelling (uni-, use-, eu-, one- sound like 'y'/'w')."""
    if word.startswith(("hour", "honest", "honor")):
        return "an"
    if word[0] in _VOWELS and not word.startswith(("uni", "use", "usu", "eu", "one")):
        return "an"
    return "a"


@dataclasses.dataclass(frozen=True)
class Verb:
    base: str
    third: str  # he/she/it form of the present
    past: str
    participle: str
    ing: str


def parse_verb(spec: str) -> Verb:
    """`walk`, `stop!` (doubles its last consonant) or `run!/ran/run` (irregular past/participle)."""
    head, *irregular = spec.split("/")
    doubles = head.endswith("!")
    base = head.rstrip("!")
    if irregular and len(irregular) != 2:
        raise ValueError(f"verb spec {spec!r} must be base, base! or base/past/participle")
    stem = base + base[-1] if doubles else base
    if base.endswith("ie"):
        ing = base[:-2] + "ying"
    elif base.endswith("e") and not base.endswith(("ee", "ye", "oe")):
        ing = base[:-1] + "ing"
    else:
        ing = stem + "ing"
    if irregular:
        past, participle = irregular
    elif base.endswith("e"):
        past = participle = base + "d"
    elif base.endswith("y") and base[-2] not in _VOWELS:
        past = participle = base[:-1] + "ied"
    else:
        past = participle = stem + "ed"
    return Verb(base, _add_s(base), past, participle, ing)


def _all_verb_specs() -> list[str]:
    specs = [s for group in TRANSITIVE.values() for s in group]
    return specs + list(INTRANSITIVE) + list(INFINITIVE_TAKERS) + list(DITRANSITIVE) + list(WEATHER_VERBS)


def check_lexicon() -> None:
    """Fails loudly on a malformed entry (run by the tests): every word lowercase ASCII letters or '."""
    allowed = set("abcdefghijklmnopqrstuvwxyz'")
    groups = [*NOUNS.values(), *MASS_NOUNS.values(), *ADJECTIVES.values(), INTENSIFIERS, MANNER_ADVERBS,
              FREQUENCY_ADVERBS, WEATHER_ADJECTIVES, DAYS, MONTHS, SEASONS, PARTS_OF_DAY, MALE_NAMES,
              FEMALE_NAMES, SURNAMES, TITLES, CITIES, COUNTRIES]
    for group in groups:
        for entry in group:
            for word in entry.split():
                if not set(word) <= allowed:
                    raise ValueError(f"lexicon word {word!r} has characters outside a-z and apostrophe")
    for spec in _all_verb_specs():
        parse_verb(spec)
