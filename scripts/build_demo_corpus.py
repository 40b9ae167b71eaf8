#!/usr/bin/env python3
"""Build unimir's bundled demo corpus: a small public-domain image-text corpus in the M-BEIR layout.

Usage (from the repository root)::

    python scripts/build_demo_corpus.py --out src/unimir/demo_corpus

The output under ``src/unimir/demo_corpus`` is committed data and is regenerated only by this script. The build is
deterministic: the same sources, seed and library versions give byte-identical files.

Sources (nothing else is read):

* Debian's ``openclipart-png`` (pre-rendered PNGs, the images) and ``openclipart-svg`` (the ``<dc:title>`` and
  ``<dc:description>`` metadata used for captions). Open Clip Art Library: public domain.
  Install with ``apt-get install openclipart-png openclipart-svg``.
* CC0 / public-domain sample photos shipped inside scikit-image's ``skimage.data`` (each listed in PHOTOS below with
  its licence and credit).

Build-time dependencies: Pillow and numpy (already unimir dependencies) and **scikit-image, which is needed only by
this script and is not a dependency of the unimir package**: ``pip install -c constraints.txt scikit-image``.

Layout written (dataset id 10, dataset name ``demo``; see docs/mbeir-format.md)::

    mbeir_images/demo_images/{clipart,photos,variants,queries/test,queries/train}/...
    cand_pool/mbeir_demo_cand_pool.jsonl
    query/test/mbeir_demo_task{0,3,4,7}_test.jsonl      T->I, I->T, I->I, (I,T)->I
    query/train/mbeir_demo_train.jsonl                  separate training queries (tasks 0, 2, 3, 4, 7)
    qrels/test/mbeir_demo_task{0,3,4,7}_test_qrels.txt
    qrels/train/mbeir_demo_train_qrels.txt
    instructions/query_instructions.tsv
    README.md
"""

from __future__ import annotations

import argparse
import hashlib
import html
import io
import json
import random
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

try:
    import numpy as np
    from PIL import Image, ImageEnhance, ImageFilter, ImageOps
except ImportError as exc:  # pragma: no cover - unimir always has these
    sys.exit(f"build_demo_corpus.py needs Pillow and numpy ({exc}); install unimir first.")

DATASET_ID = 10
DATASET_NAME = "demo"
SEED = 20240610
MAX_SIDE = 192
JPEG_QUALITY = 85
PER_NOUN_CAP = 3           # at most this many clip-art images per canonical noun, for variety
N_CLIPART = 440            # clip-art drawings kept: one per noun first, then a second, ... (round robin)
N_TRAIN_VIEWS = 260        # bases that get a training view (all I->T and (I,T)->I test bases among them)
N_TEST = 150               # queries per test file for tasks 0, 3 and 4
N_TEST_TASK7 = 120         # (I,T)->I test queries; each adds two variants to the pool
N_TRAIN_ONLY_VARIANTS = 30  # extra (I,T)->I pool variants that only training queries use
N_IMAGE_TEXT = 40          # "image,text" candidates (image + its description)

OPENCLIPART_PNG = Path("/usr/share/openclipart/png")
OPENCLIPART_SVG = Path("/usr/share/openclipart/svg")
IMG_ROOT = "mbeir_images/demo_images"

# Directories of the clip-art collection that hold icons, symbols, flags, maps and patterns rather than objects.
EXCLUDED_DIRS = (
    "computer/icons", "computer/buttons", "computer/folders", "computer/network", "computer/diagrams",
    "computer/connectors", "computer/games", "shapes", "special", "logos", "buttons", "geography",
    "signs_and_symbols/flags", "signs_and_symbols/map_symbols", "signs_and_symbols/led", "signs_and_symbols/hazard",
    "signs_and_symbols/awards", "transportation/aiga-symbols", "transportation/roadsigns", "recreation/games",
    "recreation/religion", "people", "decorations", "tools/weapons", "unsorted/duplicates",
)
# Clip-art whose file name or title parses to a wrong or misleading object; checked by looking at them.
EXCLUDED_FILES = {
    "animals/mammals/horses/mechorse.png", "animals/lucchetto_grigio_archite_01.png",
    "animals/lucchetto_ottone_archite_01.png", "animals/cymru_flag_wales_michae_.png",
    "animals/bugs/virus_andreas_nilsson_01.png", "animals/birds/wing_mitchell_johnson_si_.png",
    "animals/fish/kallisti-grenade_1_nurbl_01.png", "food/fruit/kallisti-grenade_1_nurbl_01.png",
    "food/fruit/eris_apple_nurbldoff_01.png", "animals/birds/simbolo_egizio_architett_01.png",
    "animals/tatoo_tatuaggio_tatuagg_01.png", "tools/smoke_nicu_buculei_01.png", "tools/smoke_nicu_buculei_02.png",
    "tools/smoke_nicu_buculei_03.png", "transportation/vehicles/wing_mitchell_johnson_si_.png",
    "food/come_si_dispongono_le_p_01.png", "education/books/cartoon_squirrel_mike_sm1.png",
    "animals/mammals/housecats/le_mie_tigri_preferite_a_01.png", "tools/stefan_graubner_stefan_g_01.png",
    "tools/scart_connector_pinout_s_02.png", "food/beverages/flower-pot_01.png",
    "animals/mammals/emule_icon_emule.org_01.png", "food/libro_di_ricette_di_cuc_01.png",
    "education/books/libro_di_ricette_di_cuc_01.png", "transportation/vehicles/quay_sign_01.png",
    "tools/toys/unit_blocks_lion_kimbro_01.png", "animals/2_dead_frogs_lumen_desig_01.png",
    "animals/amphibian/2_dead_frogs_lumen_desig_01.png", "animals/lindworm_snake_jonadab_t_01.png",
    "computer/bluepane_01.png", "food/beverages/teiera_tazza_architetto__01.png",
    "transportation/cycle_lane.png", "transportation/vehicles/cycle_route.png",
    "transportation/vehicles/cycle_lane.png",
    "transportation/vehicles/crossroads.png", "transportation/vehicles/curve_ahead.png",
    "transportation/bus_opposite.png", "unsorted/caterpillar.png", "recreation/music/trumpet_herald__ganson.png",
}
# Files directly in these directories (not their subdirectories) are mostly signs and symbols.
EXCLUDED_TOP_LEVEL = ("signs_and_symbols",)
# A title or file name with one of these words shows a sign, symbol or icon rather than the object itself.
JUNK_TOKENS = {"pointer", "symbol", "symbols", "sign", "signs", "icon", "logo", "map", "flag", "lane", "route",
               "tower", "marchio", "cursor", "button"}
# A rendering of a broken SVG ("Linked Image Not Found"); anything that looks like it is dropped.
PLACEHOLDER = "animals/birds/duck_yellow_ii_kurt_cagl_.png"
MIN_SIDE = 96              # drop clip-art whose drawing is smaller than this after trimming

# ----------------------------------------------------------------------------------------------------------------
# Vocabulary. Each line: canonical English noun (as it appears in captions) ": " surface forms found in titles and
# file names (English, Italian, French; the canonical form is always a surface form too). Prefer concepts that
# ImageNet knows: the default encoder only recognises its 1000 classes.
# ----------------------------------------------------------------------------------------------------------------
NOUNS = """
cat: cats, gatto, gatti, gattina, chat, housecat
kitten: kittens, gattino
dog: dogs, cane, cani, chien, doggy
puppy: puppies, bulldog puppy
beagle:
labrador retriever: labrador
horse: horses, cavallo, cheval, pony
tiger: tigers, tigre
lion: lions, leone
bear: bears, orso, ours
teddy bear: teddybear, teddy
elephant: elephants, elefante, elefantone, olifant
giraffe: giraffa
monkey: monkeys, scimmia, chimp
baboon:
orangutan:
rabbit: rabbits, bunny, coniglio, lapin
kangaroo: canguro
pig: pigs, maiale, porcinet, cochon
cow: cows, vacca, mucca
bull: toro, taureau
sheep: pecora, pecorella
ram: dall sheep ram
goat: capra
ibex: stambecco
camel: cammello, camel head
deer: cervo
fawn:
antelope: antilope
rhinoceros: rhino, rinoceronte
squirrel: scoiattolo
chipmunk:
hamster:
beaver:
fox: volpe, renard
wolf: lupo, wolf head
raccoon:
mouse: topo, souris
bat: pipistrello
seal: foca
dolphin: dolphins, delfino
whale: bluewhale, balena, blue whale
killer whale: orca
echidna:
armadillo:
bird: birds, uccello, uccelli, pennuto, oiseau
swan: swans, cigno, cigni, cygne
eagle: aquila, acquila, aigle
owl: gufo, civetta, hibou
seagull: gull, gabbiano, mouette
rooster: gallo, coq
hen: gallina, poule
chicken: pollo
turkey: tacchino, dinde
duck: ducks, anatra, papera, canard
rubber duck: rubber ducks
penguin: penguins, pinguino, tux, manchot
flamingo: flamand, fenicottero
crow: corvo
dove: colomba
pigeon: colombo
puffin:
cormorant:
ostrich: struzzo
parrot: pappagallo
butterfly: butterflies, farfalla, farfalle, papillon
ladybug: ladybird, coccinella, coccinellona, coccinelle
bee: bees, ape, abeille
wasp: vespa
ant: ants, formica, formichina, formicona, fourmi
spider: ragno, ragnetto
fly: mosca
mosquito: zanzara, moschito, moustique
dragonfly: libellula, libellule
damselfly:
grasshopper: grass hopper, cavalletta
caterpillar: bruco
snail: lumaca, escargot
praying mantis: mantis, mantide religiosa, mante religieuse, mantide
scorpion: scorpione
lizard: lucertola, lucertolona, lucertolone, lezard
green lizard: ramarro
snake: serpente
turtle: tartaruga, tortue
frog: frogs, rana, grenouille
tree frog: red eye frog
dinosaur: dinosaurs, dino, dinosauro, dinosauri
dragon: drago
fish: pesce, pescetto, poisson, bofish, giraffe cichlid, cichlid, clown loach, gourami, brown fish
goldfish:
angelfish:
seahorse: cavalluccio marino
crayfish: crawfish
octopus: polpo
apple: mela, pomme, applf
pear: pera, poire
banana: bananas, banane
cherry: cherries, ciliegia, ciliegie
grapes: grape, uva
lemon: limone, citron
lime:
orange: arancia, oranges
peach: pesca
plum: prugna, prune
strawberry: fragola, fraise
watermelon: anguria, pasteque
melon:
pineapple: ananas
acorn:
tomato: tomatoes, pomodoro, pomodori
potato: patata
carrot: carota
onion: cipolla
head of garlic: garlic, aglio
toast: garlic toast
corn on the cob: corn cob, pannocchia, pannocchia di gran turco
bell pepper: paprika, peperone
chili pepper: peperoncino, cayenne pepper, habanero pepper, cayennepepperrevisited
radish: ravanello
pumpkin: zucca
mushroom: fungo, champignon, toadstool
salad: insalata
bread: loaf of bread
croissant: cornetto
pretzel:
muffin: muffins
pancakes: pan cakes, pancake
pizza: pizza slice
hamburger: burger, cheeseburger
chicken burger:
hot dog:
corn dog: corndog
sandwich: tramezzino, submarine sandwich
french fries: fries
spaghetti:
lasagna:
pasta:
soup: zuppa
cheese: formaggio, fromage
butter:
egg: uovo
fried eggs: fried egg
bacon:
sausage: breakfast sausage
salami:
steak:
cake: torta, gateau, birthday cake, flat cake
pie: apple pie, cherry pie, pumpkin pie
ice cream cone: ice cream, gelato, glace, cone
soft-serve ice cream cone: soft serve ice cream cone
candy: caramella
lollipop:
cookie: biscotto
honey: miele
honeycomb: ape miele
burrito:
waffle: gauffre
pudding: pudim, flan
potato chips:
onion rings:
candied apples:
marshmallow:
cup of coffee: coffee, caffe, tazza di caffe
mug of tea: kubek herbaty
teapot: teiera
teacup:
mug: kubek
cup: tazza
wine glass: calice
wine glasses: calici
martini glass:
bottle: bottiglia
wine bottle: bottiglia di vino
beer: birra
beer cans: lattine di birra
milk: latte
milk carton:
juice box: apple juice box, orange juice box
soda can: pop can, lattina
soft drink:
cocktail:
lemonade:
baby bottle: biberon
ice cube: icecube
espresso machine: macchina caffe
blender: frullatore
frying pan: padella
colander: scolapasta
bowl: scodella
bowl of soup: bowl of steaming soup
plate: piatto
meat grinder: meatgrinder
barrel: botte
flower: flowers, fiore, fiori, fleur
rose: roses
bouquet of flowers: mazzo di fiori
daisy: margherita
daffodil:
tulips: tulip
sunflower: sun flower, girasole
cactus: cacuts
tree: trees, albero, arbre
palm tree: palmtree, palm
christmas tree: sapin
fern:
leaf: leaves, foglia, foglie
house: houses, casa, home, maison
lighthouse: faro
church: chiesa
castle: chateau, castello
tent: tenda, tenda da campeggio
igloo:
chair: sedia, chaise
office chair: poltrona ufficio
table: tavolo, table
couch: sofa, divano
bed: letto
lamp: lampada
desk lamp:
television: tv, televisore, televisione
computer: computers, workstation
laptop:
computer keyboard: keyboard, tastiera
computer mouse:
monitor: lcd monitor, flat screen, schermo
printer: stampante, laserprinter
joystick:
router:
digital camera: fotocamera, macchina fotografica digitale
camera:
video camera: camcorder, telecamera, cinepresa
telephone: phone, telefono, telephone receiver, phone handset
mobile phone: cell phone, cellular phone, handphone
headphones: cuffie
microphone: microfono
loudspeaker: speaker, altoparlante
radio:
boombox:
jukebox:
light bulb: lightbulb, bulb, lampadina
battery: batterie, pila
satellite dish: parabola
clock: orologio, analog clock, analogue clock, modern clock
alarm clock: sveglia
hourglass: clessidra, sandglass, sand glass
calculator: calcolatrice
envelope: envelop, busta, lettera
mailbox: cassetta postale
book: books, libro, libri, livre
stack of books:
newspaper: giornale
pencil: matita, crayon
pen: ballpoint pen, penna
paint brush: pennello
brush:
scrub brush:
paintbrush palette: palette, tavolozza
scissors: forbici
stapler: pinzatrice, stappler
paperclip: clips, graffetta
thumbtack: puntine, pin
magnifying glass: magnifier, lente, magnificator, magnifing glass
globe:
hammer: martello
saw: sega, bowsaw
screwdriver: cacciavite
wrench: chiave inglese
drill: trapano
axe: ascia
shovel: pala, roundpointshovel
rake: leafrake
broom: scopa
bucket: secchio
paint roller: brush roller
vacuum cleaner: vacuum, aspirapolvere, vavuum cleaner
iron: ferro da stiro
ironing board: asse da stiro
padlock: lock, lucchetto, serratura
key: chiave, keyring
compass: bussola
microscope: microscopio
telescope: cannocchiale, spyglass
binoculars: binocolo
thermometer: termometro
syringe: siringa
test tube: provetta, provette
flask: chemistry flask, erlenmeyer
scale: bilancia
gear: cog, ruota dentata, engrenagem
magnet: calamita
anvil:
screw: viti
candle: candela
umbrella: ombrello
guitar: chitarra, guitare
acoustic guitar:
electric guitar:
bass guitar: bass-guitar
violin: violino
cello: violoncello
harp: arpa
piano: pianoforte
drum: drums, tamburo, africandrum, djambe drum, derbouk
trumpet: tromba
trombone: tenor trombone
french horn:
saxophone: sassofono
flute: flauto
oboe:
xylophone:
maracas:
record: vinyl disc, rpm record, rpm records
compact disc: cd
CD player: cd player
headset: casco con microfono
soccer ball: football ball, soccer ballon, pallone
baseball:
baseball bat:
baseball glove:
baseball cap: cap
basketball:
volleyball: volley ball, volley-ball
rugby ball: rugby
tennis racket: racquet, racket
bowling ball: blowling ball
football helmet:
golf ball:
surfboard:
dartboard:
skateboard:
roller skate: pattino, rollerblades
kite: aquilone
balloon: balloons, palloncino, palloncini, baloon
hot air balloon: pallone aerestatico, pallone aerostatico, mongolfiera
gift box: gift, pacco regalo, regalo
rubik's cube: rubik s cube, rubik
toy train: kiddy train
robot:
hat: cappello, chapeau, fedora, tophat, sombrero
crown: corona, couronne
t-shirt: t shirt, maglietta
shoe: shoes, scarpa
tennis shoes: tennis shoe
hiking boot: boot
sunglasses: occhiali da sole
tie: cravatta
mitten: mittens
sock: calzettoni
handbag: borsetta
backpack: zaino
suitcase: valigia, valigie
wallet: portafoglio
piggy bank: piggybank
diamond: diamante
ring: rings, anello, wedding rings
necklace: gold chain
car: cars, auto, automobile, macchina, sportcar, old car
station wagon: wagon
jeep: hummer, 4wd
bus: autobus
truck: camion, tir
fire engine: fire truck
ambulance: ambulanza
tractor: trattore
bicycle: bike, bicicletta, cycle, vtt
motorcycle: moto, motocicletta
train: treno
airplane: aeroplano, aircraft, plane, aereo, airplane
helicopter: elicottero
rocket:
boat: barca, bateau
sailboat: sailboat illustration, veliero
ship: nave
trawler:
submarine: sottomarino
canoe:
sledge: sled, slitta
wheelbarrow: carretta
concrete mixer: betoniera
chainsaw: motosega
snowman: pupazzo di neve
sun: sole, soleil
moon: luna, lune
rainbow: arcobaleno
sword: spada, longsword, katana
shield: scudo
boomerang:
anchor: ancora
wheel: ruota
box: boxes, scatola, scatolone, cardboard box, closed box, open box
basket: cesto, cestino
trash can: cestino pieno, cestino vuoto
paper bag: paperbag
"""

# Surface forms whose meaning depends on the collection directory.
DIR_OVERRIDES = {
    ("computer", "mouse"): "computer mouse",
    ("recreation/sports", "bat"): "baseball bat",
    ("recreation/toys", "station wagon"): "toy wagon",
}

# Adjectives: surface form -> English adjective. Colours are tagged so that an image-derived colour is not added
# on top of a title colour.
COLOURS = {
    "red": "red", "rosso": "red", "rossa": "red", "rouge": "red",
    "green": "green", "verde": "green", "vert": "green", "zielony": "green",
    "blue": "blue", "blu": "blue", "bleu": "blue", "azzurro": "blue",
    "yellow": "yellow", "giallo": "yellow", "gialla": "yellow", "jaune": "yellow",
    "orange": "orange", "arancione": "orange", "arancioni": "orange",
    "purple": "purple", "viola": "purple", "violet": "purple",
    "pink": "pink", "rosa": "pink", "rose": "pink",
    "brown": "brown", "marrone": "brown", "marroni": "brown",
    "black": "black", "nero": "black", "nera": "black", "noir": "black",
    "white": "white", "bianco": "white", "bianca": "white", "blanc": "white",
    "grey": "grey", "gray": "grey", "grigio": "grey", "grigia": "grey", "gris": "grey",
    "gold": "golden", "golden": "golden", "silver": "silver",
    "bw": "black and white", "bn": "black and white", "b&w": "black and white",
}
ADJECTIVES = {
    "small": "small", "little": "little", "piccolo": "small", "piccola": "small", "tiny": "tiny",
    "big": "big", "large": "large", "grande": "big", "tall": "tall", "taller": "tall",
    "old": "old", "vecchio": "old", "antique": "antique", "modern": "modern",
    "cartoon": "cartoon", "funny": "funny", "cute": "cute", "crazy": "crazy", "happy": "happy", "angry": "angry",
    "simple": "simple", "semplice": "simple", "stylized": "stylized", "stilizzata": "stylized",
    "stilizzato": "stylized", "fancy": "fancy",
    "sleeping": "sleeping", "flying": "flying", "running": "running", "jumping": "jumping",
    "swimming": "swimming", "sitting": "sitting", "seduto": "sitting", "seduta": "sitting",
    "wooden": "wooden", "legno": "wooden", "wood": "wooden", "metal": "metal", "plastic": "plastic",
    "glass": "glass", "paper": "paper", "leather": "leather",
    "open": "open", "aperto": "open", "closed": "closed", "chiuso": "closed",
    "electric": "electric", "acoustic": "acoustic", "digital": "digital", "classical": "classical",
    "celtic": "Celtic", "african": "African", "baby": "baby", "wild": "wild", "soft": "soft",
    "square": "square", "round": "round", "rectangular": "rectangular", "striped": "striped",
    "spotted": "spotted", "pezzata": "spotted", "shaded": "shaded", "shiny": "shiny",
    "bitten": "bitten", "half": "halved", "sliced": "sliced", "whole": "whole", "fried": "fried",
    "steaming": "steaming", "hot": "hot", "frozen": "frozen",
    "outline": "line drawing", "contorno": "line drawing", "contour": "silhouette", "silhouette": "silhouette",
    "silhouet": "silhouette",
    "winter": "winter", "summer": "summer", "emperor": "emperor", "brightlit": "lit", "lit": "lit",
    "notlit": "unlit", "upright": "upright", "mountain": "mountain", "tropical": "tropical",
}
ADJ_ORDER = ["size", "opinion", "state", "shape", "age", "colour", "material", "other"]
ADJ_KIND = {
    **{a: "size" for a in ("small", "little", "tiny", "big", "large", "tall")},
    **{a: "opinion" for a in ("cartoon", "funny", "cute", "crazy", "happy", "angry", "simple", "stylized", "fancy",
                              "shiny", "soft")},
    **{a: "shape" for a in ("square", "round", "rectangular")},
    **{a: "state" for a in ("bitten", "sleeping", "flying", "swimming", "running", "jumping", "sitting", "lit",
                            "unlit", "halved", "sliced", "whole", "fried", "steaming", "hot", "frozen", "open",
                            "closed")},
    **{a: "age" for a in ("old", "antique", "modern")},
    **{a: "material" for a in ("wooden", "metal", "plastic", "glass", "paper", "leather")},
}
# Words that start an attached phrase ("an owl on a branch") and the nouns allowed in such phrases besides NOUNS.
PHRASE_PREPS = {"with": "with", "on": "on", "under": "under", "in": "in"}
PHRASE_EXTRA = {
    "leash", "branch", "worm", "bow", "hearts", "toothpaste", "olive", "candle", "stars", "snow", "pot", "sky",
    "platter", "spring", "folders", "paperclip", "pin", "wheels", "sauce", "berries", "bubbles", "sails",
    "wings", "lemon", "straw", "ribbon", "hat", "scarf", "leaves", "fruit", "fire", "smoke", "cherry", "flowers",
    "heart", "bone", "ball", "ears", "tail", "cheese", "stamp", "wand",
}
UNCOUNTABLE = {"toast", "toothpaste", "snow", "smoke", "fire", "sauce", "fruit", "honey", "milk", "butter", "cheese",
               "salad", "pasta", "spaghetti", "lasagna", "soup", "bread", "bacon", "salami", "lemonade", "beer",
               "candy", "popcorn", "sky"}
PLURAL_NOUNS = {"grapes", "pancakes", "french fries", "fried eggs", "potato chips", "onion rings", "candied apples",
                "tulips", "maracas", "sunglasses", "binoculars", "scissors", "headphones", "tennis shoes",
                "beer cans", "wine glasses", "hearts", "stars", "berries",
                "bubbles", "folders", "flowers", "leaves", "wings", "ears"}
CONNECTORS = {"and", "e", "et", "with", "con", "on", "in", "under", "of", "di", "da", "del", "della", "dei", "des",
              "de", "du", "la", "le", "il", "lo", "a", "an", "the", "al", "sulla", "nella", "per", "for", "to",
              "from", "by", "at", "against", "vs", "or", "without"}
# "open" and "closed" describe these nouns only ("Rubber Duck (Open Bill)" is not an open duck).
OPENABLE = {"book", "box", "padlock", "umbrella", "envelope", "suitcase", "mailbox", "gift box", "laptop"}
STYLE_WORDS = {"line drawing", "silhouette"}
JUNK_TITLE = re.compile(
    r"^(clipart by|etiquette icons|various cliparts|r1\d\b|part of the|homes clipart|svg road signs|lemon svg"
    r"|aiga|hash\(|menu clip art|australian maps|balloons-aj|moons|gramastar|card$|diner menu|svg gradient"
    r"|flat icon|r16 sibmission|r15 general)", re.I)
JUNK_DESC = re.compile(
    r"@|https?:|www\.|hash\(|inkscape|sodipodi|created|made with|clip ?art|autotrace|vectori|derivative|converted"
    r"|\bsvg\b|public domain|released|<!--|gensplash|based on|eps |[^\x20-\x7e]", re.I)

# Photos from skimage.data: only ones whose docstring states CC0 or public domain. (skimage.data function, caption,
# alternative text for training queries, description for an "image,text" candidate or None, licence and credit)
PHOTOS = [
    ("astronaut", "a portrait photo of an astronaut in an orange spacesuit next to a flag and a model space shuttle",
     "a woman astronaut smiling, with her helmet in front of her",
     "Photograph of Eileen Collins, an American astronaut who piloted the space shuttle in 1995.",
     "public domain; NASA Great Images database (Eileen Collins)"),
    ("coffee", "a photo of a cup of espresso on a red saucer with a spoon",
     "an espresso in a white cup on a wooden table",
     "A coffee cup on a saucer, courtesy of Pikolo Espresso Bar.",
     "CC0, photographer Rachel Michetti (courtesy of Pikolo Espresso Bar)"),
    ("chelsea", "a photo of a tabby cat", "a ginger cat looking to the side",
     "Chelsea the cat, a tabby, photographed by Stefan van der Walt.", "CC0, photographer Stefan van der Walt"),
    ("rocket", "a photo of a rocket on its launch pad at night", "a space rocket standing between launch towers",
     "Launch photo of a Falcon 9 rocket carrying the DSCOVR satellite at Cape Canaveral.",
     "public domain; SpaceX Photos (Falcon 9 / DSCOVR launch)"),
    ("camera", "a black and white photo of a man taking a picture with a camera on a tripod",
     "a photographer with a tripod camera in a park", None, "CC0, photographer Lav Varshney"),
    ("clock", "a motion-blurred black and white photo of a wall clock", "a blurry clock on a grey wall", None,
     "public domain, photographer Stefan van der Walt"),
    ("brick", "a black and white photo of a brick wall", "bricks in a wall seen at an angle", None,
     "CC0, CC0Textures (Bricks25), transformed by scikit-image"),
    ("grass", "a black and white close-up photo of grass", "blades of grass seen from above", None,
     "CC0, DeviantArt user linolafett (Grass-01), cropped by scikit-image"),
    ("gravel", "a black and white close-up photo of gravel", "small stones on the ground", None,
     "CC0, CC0Textures (Gravel04), cropped by scikit-image"),
    ("retina", "a medical photo of the retina of a human eye", "the back of an eye with its blood vessels",
     "Fundus photograph of a normal left eye.",
     "CC0, Mikael Haggstrom via Wikimedia Commons (Fundus photograph of normal left eye)"),
    ("hubble_deep_field", "a telescope photo of many distant galaxies in deep space",
     "a dark sky full of faint galaxies",
     "The Hubble eXtreme Deep Field, the telescope's farthest view of the universe.",
     "public domain; NASA / HubbleSite (Hubble eXtreme Deep Field)"),
    ("horse", "a black silhouette of a horse", "the shape of a horse in solid black", None,
     "CC0, Andreas Preuss (marauder) via openclipart"),
    ("cell", "a microscope image of a single cell floating in saline", "a round blob under a microscope", None,
     "CC0, Paul Muller et al. (quantitative phase image)"),
    ("text", "a black and white photo of handwritten maths on a sheet of paper", "handwritten formulas on paper",
     None, "public domain; Wikipedia (File:Corner.png)"),
]

# Task 7 modifications: name -> (test text, [training paraphrases], short suffix for T->I training text)
MODIFICATIONS = {
    "gray": ("the same picture in black and white",
             ["make it black and white", "the same image without any colour", "turn this into a greyscale picture"],
             "in black and white"),
    "mirror": ("the same picture mirrored from left to right",
               ["flip it horizontally", "show the mirror image of this picture", "the same image facing the other way"],
               "mirrored from left to right"),
    "upside": ("the same picture turned upside down",
               ["rotate it by 180 degrees", "flip this picture upside down", "the same image, but upside down"],
               "upside down"),
    "invert": ("the same picture with inverted colours, like a photo negative",
               ["invert all the colours", "show the negative of this image", "the same picture with colours reversed"],
               "with inverted colours"),
    "rot90": ("the same picture rotated a quarter turn clockwise",
              ["turn it 90 degrees to the right", "rotate this picture clockwise by 90 degrees",
               "the same image lying on its side, turned clockwise"],
              "rotated a quarter turn clockwise"),
    "tint_blue": ("the same picture recoloured in shades of blue",
                  ["make everything blue", "tint this picture blue", "the same image in blue tones only"],
                  "in shades of blue"),
    "tint_red": ("the same picture recoloured in shades of red",
                 ["make everything red", "tint this picture red", "the same image in red tones only"],
                 "in shades of red"),
    "tint_green": ("the same picture recoloured in shades of green",
                   ["make everything green", "tint this picture green", "the same image in green tones only"],
                   "in shades of green"),
    "zoom": ("a close-up of the centre of the same picture",
             ["zoom in on the middle", "crop to the central part of this image", "a tighter crop of the same picture"],
             "zoomed in on the centre"),
}

INSTRUCTIONS = [
    ("text", "image", ["Find me an image that matches the given caption.",
                       "Identify the picture that best fits this description.",
                       "Retrieve a drawing or photo that corresponds to the given text.",
                       "Show me an image that the following caption describes."]),
    ("image", "text", ["Find a caption that describes the given image.",
                       "Retrieve the text that best describes this picture.",
                       "Identify a description that matches the content of the image.",
                       "Find me words that caption this picture."]),
    ("image", "image", ["Find the original image that this altered picture was made from.",
                        "Retrieve the image that shows the same picture as the given one.",
                        "Identify the picture this cropped, flipped or recoloured view comes from.",
                        "Find me the same image despite the edits made to this copy."]),
    ("image,text", "image", ["Retrieve an image that applies the modification instructions to the provided image.",
                             "Find the picture that results from changing the given image as described.",
                             "Given the image and the requested change, find the edited image.",
                             "Show me the provided picture after the described modification."]),
    ("text", "image,text", ["Find an illustrated entry, an image with its description, that matches the given text.",
                            "Retrieve a picture together with its description that matches the query.",
                            "Identify the image and text pair that best fits this description.",
                            "Show me an image with an accompanying description about the following."]),
]
T2I_TRAIN_TEMPLATES = ["a drawing of {}", "clip art showing {}", "an illustration of {}", "a simple picture of {}",
                       "a picture that shows {}"]
T2IT_TRAIN_TEMPLATES = ["an entry about {}", "a described picture of {}", "{} with a description"]


def fail(msg: str) -> NoReturn:
    sys.exit(f"build_demo_corpus.py: {msg}")


# ----------------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------------

def parse_vocabulary() -> tuple[dict[tuple[str, ...], str], int]:
    lex: dict[tuple[str, ...], str] = {}
    for line in NOUNS.strip().splitlines():
        canon, _, rest = line.partition(":")
        canon = canon.strip()
        for surf in [canon] + [s.strip() for s in rest.split(",") if s.strip()]:
            lex.setdefault(tuple(tokenize(surf)), canon)
    return lex, max(len(k) for k in lex)


def tokenize(text: str) -> list[str]:
    text = html.unescape(html.unescape(text))
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)           # CamelCase
    text = re.sub(r"\bB\s*(?:and|&)\s*W\b", " bw ", text, flags=re.I)
    text = text.lower().replace("é", "e").replace("è", "e").replace("à", "a").replace("ã©", "e")
    toks = re.split(r"[^a-z0-9']+", text)
    out = []
    for t in toks:
        t = t.strip("'")
        if not t or any(c.isdigit() for c in t):
            continue
        if t.endswith("'s"):
            t = t[:-2]
        out.append(t)
    return out


def article(phrase: str) -> str:
    word = phrase.split()[0].lower()
    if word.startswith(("hour", "honest", "honour")):
        return "an"
    return "an" if word[0] in "aeiou" and not word.startswith(("uni", "use", "one", "eu")) else "a"


@dataclass
class Parse:
    noun: str
    adjectives: list[str]
    phrase: str | None
    colour_from_title: bool


def parse_text(tokens: list[str], lex: dict, maxlen: int, directory: str) -> Parse | None:
    """Find the head noun, its adjectives and an attached phrase ("with a bow") in a title or file name."""
    items: list[tuple[str, str]] = []   # (kind, value): kind in noun/adj/colour/prep/conn/other
    i = 0
    while i < len(tokens):
        for n in range(min(maxlen, len(tokens) - i), 0, -1):
            key = tuple(tokens[i:i + n])
            if key in lex:
                canon = lex[key]
                for (d, surf), repl in DIR_OVERRIDES.items():
                    if directory.startswith(d) and canon == surf:
                        canon = repl
                items.append(("noun", canon))
                i += n
                break
        else:
            t = tokens[i]
            if t in PHRASE_PREPS:
                items.append(("prep", t))
            elif t in CONNECTORS:
                items.append(("conn", t))
            elif t in COLOURS:
                items.append(("colour", COLOURS[t]))
            elif t in ADJECTIVES:
                items.append(("adj", ADJECTIVES[t]))
            else:
                items.append(("other", t))
            i += 1
    # "orange" / "rose": a colour when another noun is present, a noun otherwise.
    nouns = [v for k, v in items if k == "noun"]
    if len(set(nouns)) > 1:
        items = [("colour", "orange") if (k, v) == ("noun", "orange") else
                 ("colour", "pink") if (k, v) == ("noun", "rose") else (k, v) for k, v in items]
    # Split into segments at prepositions and connectors; the head noun is the last noun of the first segment
    # that has one (English puts the head last; the Italian titles here are "noun adjective").
    seg_start = 0
    head_idx = None
    for j, (k, v) in enumerate(items + [("conn", "")]):
        if k in ("prep", "conn"):
            seg = [x for x in range(seg_start, j) if items[x][0] == "noun"]
            if seg:
                head_idx = seg[-1]
                break
            seg_start = j + 1
    if head_idx is None:
        return None
    noun = items[head_idx][1]
    segment = range(seg_start, len(items))
    adjs: list[str] = []
    colour_from_title = False
    for x in segment:
        k, v = items[x]
        if k in ("prep", "conn"):
            break
        if k == "noun" and x != head_idx and x < head_idx and v != noun:
            # a modifier noun before the head ("apple pie" is a lexicon entry; "kitchen table" is not needed)
            continue
        if v in ("open", "closed") and noun not in OPENABLE:
            continue
        if k in ("adj", "colour") and v not in adjs:
            adjs.append(v)
            colour_from_title |= k == "colour"
    if "black and white" in adjs:
        adjs = [a for a in adjs if a not in ("black", "white")]
    phrase = None
    for x in range(head_idx + 1, len(items)):
        k, v = items[x]
        if k == "prep" and x + 1 < len(items):
            words = []
            for y in range(x + 1, min(x + 4, len(items))):
                k2, v2 = items[y]
                if k2 in ("noun", "colour", "adj") or (k2 == "other" and v2 in PHRASE_EXTRA):
                    words.append(v2)
                    if k2 == "noun" or v2 in PHRASE_EXTRA:
                        break
                else:
                    break
            if words and (items[x + len(words)][0] == "noun" or words[-1] in PHRASE_EXTRA) and words[-1] != noun:
                obj = " ".join(words)
                last = words[-1]
                if last in UNCOUNTABLE or last in PLURAL_NOUNS or last.endswith("s"):
                    phrase = f"{PHRASE_PREPS[v]} {obj}"
                else:
                    phrase = f"{PHRASE_PREPS[v]} {article(obj)} {obj}"
            break
    return Parse(noun, adjs, phrase, colour_from_title)


def compose_caption(p: Parse, extra_colour: str | None, line_art: bool = False) -> str:
    """"a small red apple with a worm"; "a line drawing of a cat"; "a silhouette of a camel"."""
    adjs = [a for a in p.adjectives if a not in STYLE_WORDS]
    style = next((a for a in p.adjectives if a in STYLE_WORDS), None)
    if extra_colour == "black and white" and line_art and not style:
        style, extra_colour = "line drawing", None
    if style:       # a line drawing or a silhouette is black on white: the colour words add nothing
        adjs = [a for a in adjs if a not in ("black", "white", "black and white")]
        extra_colour = None
    if extra_colour and not p.colour_from_title and extra_colour not in adjs and p.noun not in UNCOUNTABLE \
            and extra_colour != p.noun:
        adjs.append(extra_colour)
    mass = p.noun in PLURAL_NOUNS or p.noun in UNCOUNTABLE
    if mass:            # "simple grapes" reads badly; "black and white milk" is a black and white drawing of milk
        adjs = [a for a in adjs if ADJ_KIND.get(a) != "opinion"]
        if "black and white" in adjs and not style:
            adjs.remove("black and white")
            style = "black and white drawing"
    # adjective order: size, opinion, shape, age, colour, material, other
    def kind(a: str) -> int:
        if a in COLOURS.values():
            return ADJ_ORDER.index("colour")
        return ADJ_ORDER.index(ADJ_KIND.get(a, "other"))
    adjs.sort(key=kind)
    colours = [a for a in adjs if a in COLOURS.values()]
    if len(colours) > 1:        # "black red joystick" -> "black and red joystick"
        joined = " and ".join(colours) if "black and white" not in colours else colours[0]
        first = adjs.index(colours[0])
        adjs = [a for a in adjs if a not in colours]
        adjs.insert(first, joined)
    np_ = " ".join(adjs + [p.noun])
    if mass:
        cap = np_
    else:
        cap = f"{article(np_)} {np_}"
    if style:
        cap = f"{article(style)} {style} of {cap}"
    if p.phrase:
        cap += " " + p.phrase
    return cap


def clean_description(desc: str, title: str, noun: str) -> str | None:
    d = " ".join(html.unescape(html.unescape(desc)).split())
    if not d or JUNK_DESC.search(d):
        return None
    words = d.split()
    if not 3 <= len(words) <= 25:
        return None
    def norm(text: str) -> str:
        return re.sub(r"[^a-z]+", " ", text.lower()).strip()

    new_words = set(norm(d).split()) - set(norm(title).split()) - {"a", "an", "the", "and", "of", "with", "b", "w"}
    if len(words) < 4 or len(new_words) < 2:       # only a repeat of the title
        return None
    if noun.split()[-1] not in norm(d).split() and noun not in norm(d):
        return None
    d = d[0].upper() + d[1:]
    return d if d[-1] in ".!?" else d + "."


def svg_metadata(svg: Path) -> tuple[str, str]:
    try:
        text = svg.read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return "", ""
    def grab(tag: str) -> str:
        m = re.search(rf"<dc:{tag}>(.*?)</dc:{tag}>", text, re.S)
        return " ".join(html.unescape(m.group(1)).split()) if m else ""
    return grab("title"), grab("description")


# ----------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------

def on_white(im: Image.Image) -> Image.Image:
    if im.mode in ("P", "LA", "L", "1", "I", "I;16", "F") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        bg.alpha_composite(im)
        return bg.convert("RGB")
    return im.convert("RGB")


def trim_and_fit(im: Image.Image, max_side: int) -> Image.Image | None:
    """Crop to the drawing (non-white pixels) with a small margin, then shrink to max_side."""
    a = np.asarray(im)
    mask = a.min(axis=2) < 235
    if mask.mean() < 0.002:
        return None
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    if max(h, w) < 40 or max(h, w) > 4 * min(h, w):
        return None
    pad = int(round(0.06 * max(h, w)))
    y0, x0 = max(0, y0 - pad), max(0, x0 - pad)
    y1, x1 = min(a.shape[0], y1 + pad), min(a.shape[1], x1 + pad)
    im = im.crop((int(x0), int(y0), int(x1), int(y1)))
    return fit(im, max_side)


def fit(im: Image.Image, max_side: int) -> Image.Image:
    if max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.LANCZOS)
    return im


def dhash(im: Image.Image) -> int:
    g = np.asarray(im.convert("L").resize((9, 8), Image.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def colour_stats(im: Image.Image) -> tuple[float, float, str | None]:
    """(fraction of canvas that is drawing, colourfulness of the drawing, dominant colour name or None)."""
    rgb = np.asarray(im, dtype=np.float32)
    content = rgb.min(axis=2) < 235
    frac = float(content.mean())
    if content.sum() < 50:
        return frac, 0.0, None
    hsv = np.asarray(im.convert("HSV"), dtype=np.float32)
    h, s, v = hsv[..., 0] * 360 / 255, hsv[..., 1] / 255, hsv[..., 2] / 255
    chroma = content & (s > 0.3) & (v > 0.25)
    colourful = float(chroma.sum() / content.sum())
    if colourful < 0.04:
        dark = float((content & (v < 0.35)).sum() / content.sum())
        return frac, colourful, "black and white" if dark > 0.15 else None
    if colourful < 0.5:
        return frac, colourful, None
    ring = np.ones(content.shape, dtype=bool)
    ring[3:-3, 3:-3] = False
    if content[ring].mean() > 0.4 or frac > 0.7:    # a filled background: its colour is not the object's
        return frac, colourful, None
    hh, vv = h[chroma], v[chroma]
    names = np.empty(hh.shape, dtype=object)
    names[:] = "red"
    names[(hh >= 15) & (hh < 42)] = "orange"
    names[(hh >= 42) & (hh < 70)] = "yellow"
    names[(hh >= 70) & (hh < 170)] = "green"
    names[(hh >= 170) & (hh < 255)] = "blue"
    names[(hh >= 255) & (hh < 295)] = "purple"
    names[(hh >= 295) & (hh < 345)] = "pink"
    brownish = ((hh < 42) | (hh >= 345)) & (vv < 0.62)
    names[brownish] = "brown"
    cnt = Counter(names.tolist())
    name, n = cnt.most_common(1)[0]
    if n / len(hh) >= 0.65:
        return frac, colourful, name
    return frac, colourful, None


def encode_smallest(im: Image.Image) -> tuple[bytes, str]:
    """PNG (lossless, or a 256-colour palette when that is visually lossless) or JPEG q85, whichever is smaller."""
    options: list[tuple[bytes, str]] = []
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    options.append((buf.getvalue(), ".png"))
    q = im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    err = np.abs(np.asarray(q.convert("RGB"), dtype=np.int16) - np.asarray(im, dtype=np.int16)).mean()
    if err < 2.0:
        buf = io.BytesIO()
        q.save(buf, "PNG", optimize=True)
        options.append((buf.getvalue(), ".png"))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=False)
    options.append((buf.getvalue(), ".jpg"))
    return min(options, key=lambda o: len(o[0]))


def altered_view(im: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """A random crop plus one or two of: flip, small rotation, colour jitter, blur. Never a pure variant."""
    w, h = im.size
    scale = rng.uniform(0.78, 0.92)
    cw, ch = max(8, round(w * scale)), max(8, round(h * scale))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = im.crop((x, y, x + cw, y + ch))
    ops = ["crop"]
    for op in rng.sample(["flip", "rotate", "jitter", "blur"], k=rng.choice([1, 2])):
        if op == "flip":
            out = ImageOps.mirror(out)
        elif op == "rotate":
            out = out.rotate(rng.choice([-1, 1]) * rng.uniform(6, 14), resample=Image.BICUBIC, expand=True,
                             fillcolor=(255, 255, 255))
        elif op == "jitter":
            out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.8, 1.15))
            out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.75, 1.25))
            out = ImageEnhance.Color(out).enhance(rng.uniform(0.6, 1.4))
        elif op == "blur":
            out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.1)))
        ops.append(op)
    return fit(out, MAX_SIDE), "+".join(ops)


def apply_modification(im: Image.Image, mod: str) -> Image.Image:
    if mod == "gray":
        return ImageOps.grayscale(im).convert("RGB")
    if mod == "mirror":
        return ImageOps.mirror(im)
    if mod == "upside":
        return im.rotate(180)
    if mod == "invert":
        return ImageOps.invert(im)
    if mod == "rot90":
        return im.transpose(Image.Transpose.ROTATE_270)
    if mod.startswith("tint_"):
        dark, mid = {"tint_blue": ((5, 15, 70), (40, 90, 220)), "tint_red": ((70, 5, 5), (215, 40, 35)),
                     "tint_green": ((5, 50, 10), (40, 170, 50))}[mod]
        return ImageOps.colorize(ImageOps.grayscale(im), black=dark, white=(255, 255, 255), mid=mid,
                                 blackpoint=0, whitepoint=255, midpoint=150).convert("RGB")
    if mod == "zoom":
        w, h = im.size
        box = (round(w * 0.2), round(h * 0.2), round(w * 0.8), round(h * 0.8))
        return fit(im.crop(box).resize((w, h), Image.LANCZOS), MAX_SIDE)
    raise ValueError(mod)


def asymmetry(im: Image.Image, other: Image.Image) -> float:
    a = np.asarray(im.convert("L").resize((48, 48)), dtype=np.float32)
    b = np.asarray(other.convert("L").resize((48, 48)), dtype=np.float32)
    return float(np.abs(a - b).mean())


def valid_mods(b: "Base") -> list[str]:
    mods = []
    im = b.image
    if b.colourful >= 0.35:
        mods += ["gray", "tint_blue", "tint_red", "tint_green"]
    if asymmetry(im, ImageOps.mirror(im)) > 12:
        mods.append("mirror")
    if asymmetry(im, im.rotate(180)) > 12:
        mods.append("upside")
    if im.width == im.height or 0.8 < im.width / im.height < 1.25:
        if asymmetry(im, im.transpose(Image.Transpose.ROTATE_270)) > 12:
            mods.append("rot90")
    mods.append("invert")
    if min(im.size) >= 120:
        mods.append("zoom")
    return mods


# ----------------------------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Base:
    key: str                 # source path (clip-art, relative to the openclipart png dir) or skimage name
    source: str              # "openclipart" or "scikit-image"
    image: Image.Image
    noun: str
    caption: str
    alt_text: str            # training T->I text (differs from the caption)
    description: str | None
    title: str
    colourful: float
    licence: str
    parse: Parse | None = None      # clip-art only: the parsed title
    colour: str | None = None       # clip-art only: the colour read from the drawing, when clear
    line_art: bool = False          # clip-art only: a sparse drawing (mostly lines)
    rel_path: str = ""
    img_did: str = ""
    txt_did: str = ""
    it_did: str = ""
    train_view: str = ""


@dataclass
class Writer:
    out: Path
    total_bytes: int = 0
    files: list[str] = field(default_factory=list)

    def save_image(self, im: Image.Image, rel_stem: str) -> str:
        data, ext = encode_smallest(im)
        rel = f"{IMG_ROOT}/{rel_stem}{ext}"
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.total_bytes += len(data)
        self.files.append(rel)
        return rel


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]


def check_sources() -> None:
    if not OPENCLIPART_PNG.is_dir() or not OPENCLIPART_SVG.is_dir():
        fail("the Debian packages openclipart-png and openclipart-svg are needed: "
             "apt-get install -y openclipart-png openclipart-svg")


def load_skimage():
    try:
        import skimage.data as skdata
    except ImportError:
        fail("scikit-image is needed to build the demo corpus (build-time only; it is not a dependency of "
             "unimir): pip install -c constraints.txt scikit-image")
    return skdata


def package_version(name: str) -> str:
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True,
                              check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def collect_clipart(rng: random.Random) -> list[Base]:
    lex, maxlen = parse_vocabulary()
    pngs = sorted(p for p in OPENCLIPART_PNG.rglob("*.png") if p.is_file() and not p.is_symlink())
    seen_bytes: set[str] = set()
    found: list[Base] = []
    hashes: list[tuple[int, int]] = []       # (dhash, index into found)
    placeholder_hash = None
    # look at the placeholder first so that its look-alikes can be recognised
    pngs.sort(key=lambda p: p.relative_to(OPENCLIPART_PNG).as_posix() != PLACEHOLDER)
    for png in pngs:
        rel = png.relative_to(OPENCLIPART_PNG).as_posix()
        directory = png.parent.relative_to(OPENCLIPART_PNG).as_posix()
        if rel in EXCLUDED_FILES or any(directory == d or directory.startswith(d + "/") for d in EXCLUDED_DIRS) \
                or directory in EXCLUDED_TOP_LEVEL:
            continue
        title, desc = svg_metadata((OPENCLIPART_SVG / rel).with_suffix(".svg"))
        parse = None
        title_ok = bool(title) and not JUNK_TITLE.search(title)
        if JUNK_TOKENS & set(tokenize(png.stem) + (tokenize(title) if title_ok else [])):
            continue
        if title_ok:
            parse = parse_text(tokenize(title), lex, maxlen, directory)
        if parse is None:
            parse = parse_text(tokenize(png.stem), lex, maxlen, directory)
            if parse is None:
                continue
            # the file name may carry the "bw" marker even when the title is used
        elif "bw" in tokenize(png.stem) and "black and white" not in parse.adjectives:
            parse.adjectives.append("black and white")
            parse.colour_from_title = True
        raw = png.read_bytes()
        digest = hashlib.sha1(raw).hexdigest()
        if digest in seen_bytes:
            continue
        seen_bytes.add(digest)
        try:
            with Image.open(io.BytesIO(raw)) as src:
                if src.width * src.height > 30_000_000:
                    continue
                src.load()
                im = trim_and_fit(on_white(src), MAX_SIDE)
        except (OSError, ValueError):
            continue
        if im is None:
            continue
        if max(im.size) < MIN_SIDE:
            continue
        frac, colourful, colour = colour_stats(im)
        if frac < 0.03:
            continue
        h = dhash(im)
        if rel == PLACEHOLDER:
            placeholder_hash = h
            continue
        if placeholder_hash is not None and bin(placeholder_hash ^ h).count("1") <= 8:
            continue
        desc_clean = clean_description(desc, title, parse.noun)
        base = Base(rel, "openclipart", im, parse.noun, "", "", desc_clean, title if title_ok else "", colourful,
                    "public domain (Open Clip Art Library)", parse=parse, colour=colour, line_art=frac < 0.2)
        dup = next((j for hh, j in hashes if bin(hh ^ h).count("1") <= 6), None)
        if dup is not None:
            if colourful > found[dup].colourful + 0.2:     # keep the coloured one of a colour / b&w pair
                found[dup] = base
            continue
        hashes.append((h, len(found)))
        found.append(base)

    # captions, then per-noun cap and unique captions
    by_noun: dict[str, list[Base]] = defaultdict(list)
    for b in found:
        by_noun[b.noun].append(b)
    # One drawing per noun first, then a second one, and so on up to PER_NOUN_CAP, until N_CLIPART are kept;
    # within a noun prefer drawings whose title gave adjectives or a phrase, then colourful ones. Captions must be
    # unique: a drawing whose caption is taken is skipped.
    queues: dict[str, list[Base]] = {}
    for noun in sorted(by_noun):
        group = by_noun[noun]
        rng.shuffle(group)
        group.sort(key=lambda b: (-(len(b.parse.adjectives) + bool(b.parse.phrase)), -round(b.colourful, 1)))
        queues[noun] = group
    kept: list[Base] = []
    used: set[str] = set()
    for round_ in range(PER_NOUN_CAP):
        nouns = sorted(queues)
        rng.shuffle(nouns)
        for noun in nouns:
            if len(kept) >= N_CLIPART:
                break
            while queues[noun]:
                b = queues[noun].pop(0)
                options = [compose_caption(b.parse, None, b.line_art)]
                if b.colour:
                    options.insert(0, compose_caption(b.parse, b.colour, b.line_art))
                cap = next((c for c in options if c not in used), None)
                if cap is not None:
                    used.add(cap)
                    b.caption = cap
                    kept.append(b)
                    break
    kept.sort(key=lambda b: b.key)
    for b in kept:
        if b.caption.startswith(("a line drawing", "a silhouette", "a black and white drawing")):
            b.alt_text = f"{b.caption} in clip-art style"
        else:
            k = int(hashlib.sha1(b.key.encode()).hexdigest(), 16) % len(T2I_TRAIN_TEMPLATES)
            b.alt_text = T2I_TRAIN_TEMPLATES[k].format(b.caption)
    return kept


def collect_photos(skdata) -> list[Base]:
    out = []
    for name, caption, alt, desc, licence in PHOTOS:
        arr = getattr(skdata, name)()
        if arr.dtype == bool:
            arr = np.where(arr, 0, 255).astype(np.uint8)     # the horse silhouette is a boolean mask
        im = Image.fromarray(arr)
        im = fit(on_white(im) if im.mode == "RGBA" else im.convert("RGB"), MAX_SIDE)
        frac, colourful, _ = colour_stats(im)
        out.append(Base(f"skimage.data.{name}", "scikit-image", im, name, caption, alt, desc, "", colourful,
                        licence))
    return out


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_qrels(path: Path, queries: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for q in queries:
            for did in q["pos_cand_list"]:
                f.write(f"{q['qid']} 0 {did} 1 {q['task_id']}\n")


def query(qid: int, txt: str | None, img: str | None, pos: list[str], task: int) -> dict:
    modality = "image,text" if txt and img else ("image" if img else "text")
    return {"qid": f"{DATASET_ID}:{qid}", "query_txt": txt, "query_img_path": img, "query_modality": modality,
            "query_src_content": None, "pos_cand_list": pos, "neg_cand_list": [], "task_id": task}


def build(out: Path, seed: int) -> dict:
    check_sources()
    skdata = load_skimage()
    rng = random.Random(seed)

    # clean only what this script writes
    for sub in ("mbeir_images", "cand_pool", "query", "qrels", "instructions", "README.md"):
        p = out / sub
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    writer = Writer(out)

    clipart = collect_clipart(random.Random(seed + 1))
    photos = collect_photos(skdata)
    bases = clipart + photos
    if len({b.caption for b in bases}) != len(bases):
        fail("captions are not unique")

    # ---- pool ------------------------------------------------------------------------------------------------
    pool: list[dict] = []
    next_did = [1]

    def add_cand(txt: str | None, img: str | None, src: dict | None) -> str:
        did = f"{DATASET_ID}:{next_did[0]}"
        next_did[0] += 1
        modality = "image,text" if txt and img else ("image" if img else "text")
        pool.append({"txt": txt, "img_path": img, "modality": modality, "did": did,
                     "src_content": json.dumps(src, ensure_ascii=False) if src else None})
        return did

    for i, b in enumerate(bases, 1):
        folder = "clipart" if b.source == "openclipart" else "photos"
        name = slug(b.caption if folder == "clipart" else b.noun)
        b.rel_path = writer.save_image(b.image, f"{folder}/{i:04d}_{name}")
        src = {"source": b.source, "file": b.key, "licence": b.licence}
        if b.title:
            src["title"] = b.title
        b.img_did = add_cand(None, b.rel_path, src)
    for b in bases:
        b.txt_did = add_cand(b.caption, None, None)

    # image,text candidates: the image with its description (photos, then clip-art with a clean description), then
    # clip-art with its caption and its section of the clip-art library, up to N_IMAGE_TEXT
    shuffled = sorted(clipart, key=lambda b: hashlib.sha1(f"{seed}:{b.key}".encode()).hexdigest())
    described = [b for b in photos if b.description] + [b for b in shuffled if b.description]
    for b in shuffled:
        if len(described) >= N_IMAGE_TEXT:
            break
        if not b.description:
            section = " > ".join(Path(b.key).parent.as_posix().replace("_", " ").split("/"))
            b.description = (f"{b.caption[0].upper()}{b.caption[1:]}, from the {section} section of the "
                             "Open Clip Art Library.")
            described.append(b)
    for b in described[:N_IMAGE_TEXT]:
        b.it_did = add_cand(b.description, b.rel_path, {"source": b.source, "file": b.key})

    # ---- split bases between test tasks ------------------------------------------------------------------------
    order = bases[:]
    rng.shuffle(order)
    n_test = min(N_TEST, len(bases) // 3)
    t0 = sorted(rng.sample(bases, n_test), key=bases.index)
    t3 = sorted(rng.sample(bases, n_test), key=bases.index)
    # task 4 and task 7 use disjoint bases, so an altered view never resembles a pool variant of its own base
    mods_of = {id(b): valid_mods(b) for b in bases}
    t7_pool = [b for b in order if len(mods_of[id(b)]) >= 2]
    t7 = t7_pool[:min(N_TEST_TASK7, n_test)]
    t7_ids = {id(b) for b in t7}
    rest = [b for b in order if id(b) not in t7_ids]
    t4 = sorted(rest[:n_test], key=bases.index)
    train_only_var = [b for b in rest[n_test:] if len(mods_of[id(b)]) >= 2][:N_TRAIN_ONLY_VARIANTS]

    # ---- variants for (I,T)->I ---------------------------------------------------------------------------------
    # Each (I,T)->I test base gets two variants in the pool, the target and a sibling with another modification, so
    # that the image alone cannot tell which one is wanted and the text alone matches variants of many images.
    mod_names = list(MODIFICATIONS)
    variants: list[tuple[Base, str, str, str]] = []    # (base, mod, did, role: "test" | "sibling" | "train")
    counter: Counter = Counter()

    def add_variant(b: Base, mod: str, role: str) -> None:
        counter[mod] += 1
        vim = apply_modification(b.image, mod)
        rel = writer.save_image(vim, f"variants/{len(variants) + 1:04d}_{mod}_of_{Path(b.rel_path).stem[:4]}")
        did = add_cand(None, rel, {"source": "variant", "of": b.img_did, "modification": mod})
        variants.append((b, mod, did, role))

    for k, b in enumerate(t7 + train_only_var):
        valid = mods_of[id(b)]
        # round-robin over the modifications, skipping invalid ones, to keep them balanced

        def pick(options: list[str], k: int = k) -> str:
            return min(options, key=lambda m: (counter[m], (mod_names.index(m) - k) % len(mod_names)))

        mod = pick(valid)
        add_variant(b, mod, "test" if k < len(t7) else "train")
        if k < len(t7):
            add_variant(b, pick([m for m in valid if m != mod]), "sibling")
    t7 = sorted(t7, key=bases.index)

    # ---- test queries ------------------------------------------------------------------------------------------
    qid = [1]

    def next_qid() -> int:
        qid[0] += 1
        return qid[0] - 1

    tests: dict[int, list[dict]] = {}
    tests[0] = [query(next_qid(), b.caption, None, [b.img_did], 0) for b in t0]
    tests[3] = [query(next_qid(), None, b.rel_path, [b.txt_did], 3) for b in t3]
    tests[4] = []
    test_view_rng = random.Random(seed + 4)
    test_views: dict[int, bytes] = {}
    for b in t4:
        view, ops = altered_view(b.image, test_view_rng)
        rel = writer.save_image(view, f"queries/test/{Path(b.rel_path).stem[:4]}_{ops.replace('+', '_')}")
        test_views[id(b)] = view.tobytes()
        tests[4].append(query(next_qid(), None, rel, [b.img_did], 4))
    var_of = {id(b): (mod, did) for b, mod, did, role in variants if role == "test"}
    tests[7] = [query(next_qid(), MODIFICATIONS[var_of[id(b)][0]][0], b.rel_path, [var_of[id(b)][1]], 7) for b in t7]

    # ---- training queries --------------------------------------------------------------------------------------
    train: list[dict] = []
    tq = [100001]

    def train_qid() -> int:
        tq[0] += 1
        return tq[0] - 1

    # Training views (altered copies, never equal to a test view) for the I->T and (I,T)->I test bases, whose test
    # queries use the original image, and for further bases up to N_TRAIN_VIEWS.
    train_view_rng = random.Random(seed + 5)
    need = {id(b) for b in t3} | {id(b) for b in t7}
    with_view = [b for b in order if id(b) in need]
    with_view += [b for b in order if id(b) not in need][:max(0, N_TRAIN_VIEWS - len(with_view))]
    for b in sorted(with_view, key=bases.index):
        view, ops = altered_view(b.image, train_view_rng)
        while id(b) in test_views and view.tobytes() == test_views[id(b)]:
            view, ops = altered_view(b.image, train_view_rng)
        b.train_view = writer.save_image(view, f"queries/train/{Path(b.rel_path).stem[:4]}_{ops.replace('+', '_')}")
    t3_ids = {id(b) for b in t3}
    for b in bases:                                                     # T->I: a paraphrase, and the description
        train.append(query(train_qid(), b.alt_text, None, [b.img_did], 0))
        if b.description and not b.it_did:
            train.append(query(train_qid(), b.description, None, [b.img_did], 0))
    for b in bases:          # I->T: the training view, or the original image where that is not an I->T test query
        train.append(query(train_qid(), None, b.train_view or b.rel_path, [b.txt_did], 3))
        assert b.train_view or id(b) not in t3_ids
    for b in bases:                                                     # I->I: the training view
        if b.train_view:
            train.append(query(train_qid(), None, b.train_view, [b.img_did], 4))
    for k, (b, mod, did, role) in enumerate(variants):                 # (I,T)->I and T->I for every variant
        text, paraphrases, suffix = MODIFICATIONS[mod]
        para = paraphrases[k % len(paraphrases)]
        if role == "test":  # the test query uses the original image and the canonical text: train on view + paraphrase
            train.append(query(train_qid(), para, b.train_view, [did], 7))
        else:
            train.append(query(train_qid(), text, b.rel_path, [did], 7))
            train.append(query(train_qid(), para, b.train_view or b.rel_path, [did], 7))
        train.append(query(train_qid(), f"{b.caption}, {suffix}", None, [did], 0))
    for k, b in enumerate(b for b in bases if b.it_did):               # T->(I,T)
        template = T2IT_TRAIN_TEMPLATES[k % len(T2IT_TRAIN_TEMPLATES)]
        train.append(query(train_qid(), template.format(b.caption), None, [b.it_did], 2))

    # ---- write -------------------------------------------------------------------------------------------------
    write_jsonl(out / "cand_pool" / "mbeir_demo_cand_pool.jsonl", pool)
    for task, qs in tests.items():
        write_jsonl(out / "query" / "test" / f"mbeir_demo_task{task}_test.jsonl", qs)
        write_qrels(out / "qrels" / "test" / f"mbeir_demo_task{task}_test_qrels.txt", qs)
    write_jsonl(out / "query" / "train" / "mbeir_demo_train.jsonl", train)
    write_qrels(out / "qrels" / "train" / "mbeir_demo_train_qrels.txt", train)
    ins = out / "instructions" / "query_instructions.tsv"
    ins.parent.mkdir(parents=True, exist_ok=True)
    with open(ins, "w", encoding="utf-8") as f:
        f.write("query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4\n")
        for qm, cm, prompts in INSTRUCTIONS:
            f.write("\t".join([qm, cm, DATASET_NAME, str(DATASET_ID), *prompts]) + "\n")

    stats = {
        "clipart": len(clipart), "photos": len(photos), "variants": len(variants),
        "variants_test": sum(v[3] == "test" for v in variants), "mods": dict(sorted(counter.items())),
        "pool": len(pool), "pool_image": sum(c["modality"] == "image" for c in pool),
        "pool_text": sum(c["modality"] == "text" for c in pool),
        "pool_image_text": sum(c["modality"] == "image,text" for c in pool),
        "test": {t: len(q) for t, q in tests.items()}, "train": len(train),
        "train_by_task": dict(sorted(Counter(q["task_id"] for q in train).items())),
        "image_files": len(writer.files), "image_bytes": writer.total_bytes,
        "train_views": sum(bool(b.train_view) for b in bases),
        "nouns": len({b.noun for b in clipart}),
    }
    write_readme(out, stats, photos, seed)
    return stats


def write_readme(out: Path, s: dict, photos: list[Base], seed: int) -> None:
    png_v, svg_v = package_version("openclipart-png"), package_version("openclipart-svg")
    import PIL
    import skimage
    photo_lines = "\n".join(f"| `{b.key}` | {b.caption} | {b.licence} |" for b in photos)
    mods = ", ".join(f"{k} ({v})" for k, v in s["mods"].items())
    pool_counts = (f"{s['pool']} candidates: {s['pool_image']} image, {s['pool_text']} text, "
                   f"{s['pool_image_text']} image,text")
    train_counts = ", ".join(f"task {k}: {v}" for k, v in s["train_by_task"].items())
    text = f"""# unimir demo corpus (M-BEIR layout, dataset id {DATASET_ID}, `{DATASET_NAME}`)

A small, public-domain image-text corpus bundled with unimir so that the demo, the tests and the tutorials run with no
download. It uses the M-BEIR layout and record format (`docs/mbeir-format.md`): dataset id **{DATASET_ID}**, dataset
name **`{DATASET_NAME}`**. Images are public-domain clip-art of everyday objects and animals (chosen because the default
offline encoder recognises the 1000 ImageNet concepts best) plus {s['photos']} CC0 / public-domain photos.

**This directory is generated. Do not edit it by hand; regenerate it with the script:**

```
python scripts/build_demo_corpus.py --out src/unimir/demo_corpus
```

(needs `apt-get install openclipart-png openclipart-svg` and, at build time only,
`pip install -c constraints.txt scikit-image`; scikit-image is not a dependency of unimir.)
The build is deterministic (seed {seed}); the files were produced with Pillow {PIL.__version__}, numpy {np.__version__}
and scikit-image {skimage.__version__}.

## Contents

| file | records |
|---|---|
| `cand_pool/mbeir_demo_cand_pool.jsonl` | {pool_counts} |
| `query/test/mbeir_demo_task0_test.jsonl` | {s['test'][0]} T→I queries (caption → its image) |
| `query/test/mbeir_demo_task3_test.jsonl` | {s['test'][3]} I→T queries (image → its caption) |
| `query/test/mbeir_demo_task4_test.jsonl` | {s['test'][4]} I→I queries (altered view → original image) |
| `query/test/mbeir_demo_task7_test.jsonl` | {s['test'][7]} (I,T)→I queries (image + modification → modified image) |
| `query/train/mbeir_demo_train.jsonl` | {s['train']} training queries, by task: {train_counts} |
| `qrels/test/mbeir_demo_task{{0,3,4,7}}_test_qrels.txt` | `qid 0 did 1 task_id`, one line per positive |
| `qrels/train/mbeir_demo_train_qrels.txt` | the same for the training queries |
| `instructions/query_instructions.tsv` | 4 paraphrases for each (query modality, candidate modality) used |
| `mbeir_images/demo_images/` | {s['image_files']} image files, {s['image_bytes'] / 1e6:.2f} MB |

* **Pool images:** {s['clipart']} clip-art drawings (`clipart/`, {s['nouns']} distinct object nouns, at most
  {PER_NOUN_CAP} per noun), {s['photos']} photos (`photos/`) and {s['variants']} modified copies (`variants/`).
  Modifications: {mods}. Each (I,T)→I test image has two variants in the pool, made by different modifications: the
  {s['variants_test']} test positives and as many sibling distractors. The siblings and a further
  {s['variants'] - 2 * s['variants_test']} variants are positives of training queries only.
* **Text candidates** are the captions, one per clip-art drawing and photo, all distinct. The T→I test queries use
  the same caption text, so in this single mixed pool the caption's own text candidate is a strong distractor: the
  instruction (or a modality filter) has to steer retrieval to images.
* **image,text candidates** pair an image with its description (SVG `<dc:description>` or the photo's notes).
* **I→I queries** are altered views (crop plus flip, small rotation, colour jitter or blur) stored under
  `queries/test/`; they are not in the pool. The (I,T)→I queries pair an original pool image with a modification
  text; the original and a differently modified copy are in the pool too, so both parts of the query are needed.
* **Training split** (`query/train`, qids from 10:100001, disjoint from the test qids): every pool candidate is the
  positive of at least one training query, and no training query repeats a test query's content: T→I training text
  is a templated paraphrase ("a drawing of …") or the description; every I→T test image gets a different altered
  view for training (`queries/train/`, {s['train_views']} views in all, also used by the I→I training queries),
  and an image without a view is its own I→T training query; (I,T)→I training queries use a view with a paraphrased
  modification, or the original image with the text of a modification that its test query does not ask for.

Captions come from the clip-art titles (`<dc:title>` in openclipart-svg, or the file name when the title is junk),
mapped through a fixed English/Italian/French noun and adjective vocabulary into phrases such as "a red apple" or
"an owl on a branch"; a colour read from the drawing is added when it is clear. Images are composited onto white,
cropped to the drawing, shrunk to at most {MAX_SIDE} px on the long side, and stored as PNG or JPEG (quality
{JPEG_QUALITY}), whichever is smaller.

## Sources and licences

* **Open Clip Art Library**, via Debian packages `openclipart-png` {png_v} (images) and `openclipart-svg` {svg_v}
  (titles and descriptions). All clip-art in the library is dedicated to the **public domain**. Each image
  candidate's `src_content` names its source file.
* **scikit-image sample data** (`skimage.data`, scikit-image {skimage.__version__}), only images documented as CC0 or
  public domain:

| image | caption | licence / credit |
|---|---|---|
{photo_lines}

The modified copies and altered views are derived from these images and carry the same licences.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output directory (src/unimir/demo_corpus)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    stats = build(args.out, args.seed)
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
