"""The language registry: every language the assistant detects and answers in.

One row per language, and every step asks here: detection (rag.language: which lingua
languages are candidates), keyword search (the Snowball stemmer), the prompt (the
language's English name in "Answer in ..."), the support check (month names in dates,
phrases with which a reply says the sources lack a fact, how a question asks for an
amount, the number words that state one and the words that scale a figure), follow-up
resolution (words that open a follow-up or point back to the previous turn) and the
UI's choices. The
refusal and intro messages are prompt files (prompts/refusal.json,
prompts/extractive_intro.json); tests/test_languages.py checks that they, the detector
and this table agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class LanguageInfo:
    code: str  # ISO 639-1
    name: str  # English name, as the prompt says it ("Answer in German")
    native: str  # the UI's label
    lingua: tuple[str, ...]  # lingua.Language members that mean this language
    stemmer: str | None  # PyStemmer (Snowball) algorithm; None: not stemmed
    cased: bool  # names are capitalized (no in Japanese and Chinese)
    months: tuple[tuple[str, ...], ...]  # per month, its spellings (lower case)
    not_found: tuple[str, ...]  # how a reply says the sources lack the fact (lower case)
    # A follow-up opens with one of `openers` ("And in Hue?"), ends with one of `closers`
    # ("Còn Huế thì sao?") or points back with one of `pointers` ("its", "dort", "hai
    # bên"); not words that also stand alone ("there" in "Are there ...", "es" in "Gibt
    # es ...", Danish "der" in "Hvor mange er der?").
    openers: tuple[str, ...]
    closers: tuple[str, ...] = ()
    pointers: tuple[str, ...] = ()
    # Definite articles: a short question naming nothing that speaks of "the name" or
    # "die Plattform" speaks of something the conversation introduced.
    definite: tuple[str, ...] = ()
    # How a question asks for an amount (a count, a sum, a share, an age): its answer
    # must state one (rag.support.asks_amount). Number words state one without digits.
    # Whole words or phrases; a trailing "*" also matches the longer (inflected) forms;
    # "re:" starts a regular expression, for the readings a word must not have
    # ("いくつ" but not "いくつか", some). A question wrongly taken to ask an amount loses
    # a good answer: only unambiguous wordings belong here. (Dates were tried too and
    # left out: "When is the library closed?" is answered by "on Mondays".)
    amount_questions: tuple[str, ...] = ()
    numerals: tuple[str, ...] = ()
    spaced: bool = True  # words are separated by spaces (not in Japanese and Chinese)
    # The words that scale a figure ("1,6 Milliarden", "233 tỷ", "16亿") and their powers
    # of ten, as the numerals' entries; an abbreviation may take a point ("Mrd.").
    scales: tuple[tuple[str, int], ...] = ()


def _months(spellings: str) -> tuple[tuple[str, ...], ...]:
    """12 months from "jan january|feb february|...": spellings of one month by spaces."""
    months = tuple(tuple(month.split()) for month in spellings.split("|"))
    assert len(months) == 12, spellings
    return months


LANGUAGES: dict[str, LanguageInfo] = {
    info.code: info
    for info in (
        LanguageInfo(
            "en", "English", "English", ("ENGLISH",), "english", True,
            _months(
                "january jan|february feb|march mar|april apr|may|june jun|july jul|"
                "august aug|september sep sept|october oct|november nov|december dec"
            ),
            ("not mentioned", "not specified", "not stated", "not provided", "not given",
             "not available", "does not say", "do not say", "does not mention",
             "do not mention", "no information", "not found in the sources",
             "sources do not", "sources don't", "could not find", "cannot find",
             "not included"),
            ("and ", "what about", "how about", "and what about", "and how about", "and what",
             "also "),
            (),
            ("it", "its", "they", "their", "them", "he", "she", "his", "her", "him",
             "those", "these"),
            definite=("the",),
            amount_questions=(
                "how many", "how much", "how old", "how long", "how large", "how high",
                "what percentage", "what share", "what proportion", "what number of",
                "what amount",
            ),
            numerals=(
                "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                "eighteen", "nineteen", "twenty", "thirty", "forty", "fifty", "sixty",
                "seventy", "eighty", "ninety", "zero", "hundred*",
                "thousand*", "million*", "billion*", "dozen*", "half", "third", "quarter",
            ),
            scales=(
                ("thousand*", 3), ("million*", 6), ("mln", 6), ("billion*", 9), ("bn", 9),
                ("trillion*", 12),
            ),
        ),
        LanguageInfo(
            "vi", "Vietnamese", "Tiếng Việt", ("VIETNAMESE",), None, True,
            _months("|".join(f"tháng {n}" for n in range(1, 13))),
            ("không được đề cập", "không đề cập", "không được nêu", "không nêu",
             "không có thông tin", "không tìm thấy", "không được cung cấp",
             "không được cập nhật", "không được nhắc", "chưa được đề cập"),
            ("còn ", "và ", "thế còn", "vậy còn", "thế ", "vậy "),
            ("thì sao?", "thì sao", "thế nào?", "ra sao?"),
            ("đó", "ấy", "này", "họ", "nó", "hai bên", "bên kia"),
            amount_questions=("bao nhiêu", "bao lâu"),
            numerals=(
                "một", "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám", "chín", "mười",
                "mươi", "trăm", "nghìn", "ngàn", "triệu", "tỷ", "tỉ", "nửa",
            ),
            scales=(
                ("nghìn tỷ", 12), ("ngàn tỷ", 12), ("nghìn", 3), ("ngàn", 3), ("triệu", 6),
                ("tỷ", 9), ("tỉ", 9),
            ),
        ),
        LanguageInfo(
            "ru", "Russian", "Русский", ("RUSSIAN",), "russian", True,
            _months(
                "января январь|февраля февраль|марта март|апреля апрель|мая май|"
                "июня июнь|июля июль|августа август|сентября сентябрь|"
                "октября октябрь|ноября ноябрь|декабря декабрь"
            ),
            ("не указ", "не упомин", "не сообща", "не говорится", "нет информации",
             "нет ответа", "не содерж", "не приводится", "не известно", "неизвестно"),
            ("а ", "и ", "а что", "как насчёт", "как насчет", "а как"),
            (),
            ("он", "она", "оно", "они", "его", "её", "ее", "их", "ему", "ней", "нему",
             "него", "там", "этого", "этой", "этот", "эта", "эти"),
            amount_questions=(
                "сколько", "какой процент", "какая доля", "какую долю", "какова доля",
                "какой объём", "какой объем", "каков объём", "каков объем",
                "какое количество", "какова сумма", "какую сумму",
            ),
            numerals=(
                "один*", "одна", "одно", "одной", "одного", "два", "две", "двух*", "три",
                "трёх*", "трех*", "четыр*", "пят*", "шест*", "семь", "семи", "восем*",
                "восьм*", "девят*", "десят*", "одиннадцат*", "двенадцат*", "двадцат*",
                "тридцат*", "сорок*", "девяност*", "сто", "сотни", "сотен", "двест*",
                "тысяч*", "миллион*", "миллиард*", "половин*", "треть*",
            ),
            scales=(
                ("тыс", 3), ("тысяч*", 3), ("млн", 6), ("миллион*", 6), ("млрд", 9),
                ("миллиард*", 9), ("трлн", 12), ("триллион*", 12),
            ),
        ),
        LanguageInfo(
            "de", "German", "Deutsch", ("GERMAN",), "german", True,
            _months(
                "januar jänner|februar|märz|april|mai|juni|juli|august|september|"
                "oktober|november|dezember"
            ),
            ("nicht angegeben", "nicht erwähnt", "nicht genannt", "keine angabe",
             "keine informationen", "nicht enthalten", "nichts gefunden", "geht nicht hervor",
             "nicht bekannt", "wird nicht"),
            ("und ", "was ist mit", "wie steht es mit", "wie sieht es mit", "und was"),
            (),
            ("sie", "ihre", "ihrer", "ihm", "ihn", "dort", "davon", "dafür", "damit", "er",
             "sein", "seine", "dieser", "diese", "dieses"),
            definite=("der", "die", "das", "dem", "den", "des"),
            amount_questions=(
                "wie viel", "wie viele", "wie vielen", "wie vieler", "wieviel*", "wie hoch",
                "wie alt", "wie lange", "welcher anteil", "welchen anteil",
            ),
            numerals=(
                "zwei*", "drei*", "vier*", "fünf*", "sechs*", "sech*", "sieben*", "sieb*",
                "acht*", "neun*", "zehn*", "elf", "zwölf", "zwanzig", "dreißig", "vierzig",
                "fünfzig", "hundert*", "tausend*",
                "million*", "milliard*", "halb*", "hälfte", "drittel", "viertel", "dutzend*",
            ),
            scales=(
                ("tausend", 3), ("tsd", 3), ("million*", 6), ("mio", 6), ("milliarde*", 9),
                ("mrd", 9), ("billion*", 12),
            ),
        ),
        LanguageInfo(
            "no", "Norwegian (Bokmål)", "Norsk", ("BOKMAL", "NYNORSK"), "norwegian", True,
            _months(
                "januar|februar|mars|april|mai|juni|juli|august|september|oktober|"
                "november|desember"
            ),
            ("ikke nevnt", "ikke oppgitt", "ikke angitt", "ingen informasjon",
             "inneholder ikke", "fant ikke", "nevnes ikke", "oppgis ikke", "står ikke"),
            ("og ", "hva med", "hva så med", "enn "),
            (),
            ("den", "dem", "der", "dette", "disse", "han", "hun", "ham", "henne", "hans",
             "hennes", "deres", "av det", "om det", "for det"),
            amount_questions=(
                "hvor mange", "hvor mye", "hvor høy*", "hvor gammel", "hvor lenge",
                "hvor stor andel", "hvor stor en andel", "hvilken andel",
            ),
            numerals=(
                "én", "to", "tre", "fire", "fem", "seks", "sju", "syv", "åtte", "ni",
                "ti", "elleve", "tolv", "tjue", "hundre*", "tusen*", "million*", "milliard*",
                "halv*", "tredjedel*", "dusin*",
            ),
            scales=(
                ("tusen", 3), ("million*", 6), ("mill", 6), ("milliard*", 9), ("mrd", 9),
                ("billion*", 12),
            ),
        ),
        LanguageInfo(
            "da", "Danish", "Dansk", ("DANISH",), "danish", True,
            _months(
                "januar|februar|marts|april|maj|juni|juli|august|september|oktober|"
                "november|december"
            ),
            ("ikke nævnt", "ikke oplyst", "ingen oplysninger", "ingen information",
             "fremgår ikke", "fandt ikke", "nævnes ikke"),
            ("og ", "hvad med", "hvad så med"),
            (),
            ("den", "dem", "dette", "disse", "han", "hun", "ham", "hende", "hans", "hendes",
             "deres", "af det", "om det", "for det"),
            amount_questions=(
                "hvor mange", "hvor meget", "hvor høj*", "hvor gammel", "hvor længe",
                "hvor stor andel", "hvor stor en andel", "hvilken andel",
            ),
            numerals=(
                "én", "to", "tre", "fire", "fem", "seks", "syv", "otte", "ni", "ti",
                "elleve", "tolv", "tyve", "hundrede*", "tusind*", "million*", "milliard*",
                "halv*", "tredjedel*", "dusin*",
            ),
            scales=(
                ("tusind*", 3), ("million*", 6), ("mio", 6), ("milliard*", 9), ("mia", 9),
                ("billion*", 12),
            ),
        ),
        LanguageInfo(
            "sv", "Swedish", "Svenska", ("SWEDISH",), "swedish", True,
            _months(
                "januari|februari|mars|april|maj|juni|juli|augusti|september|oktober|"
                "november|december"
            ),
            ("inte nämnt", "nämns inte", "anges inte", "ingen information",
             "framgår inte", "hittade inte", "inte angivet"),
            ("och ", "hur är det med", "vad sägs om", "vad gäller"),
            (),
            ("den", "dem", "detta", "dessa", "han", "hon", "honom", "henne", "hans",
             "hennes", "deras", "av det", "om det", "för det"),
            amount_questions=(
                "hur många", "hur mycket", "hur hög*", "hur gammal", "hur länge",
                "hur stor andel", "hur stor del", "vilken andel",
            ),
            numerals=(
                "två", "tre", "fyra", "fem", "sex", "sju", "åtta", "nio", "tio",
                "elva", "tolv", "tjugo", "hundra*", "tusen*", "miljon*", "miljard*", "halv*",
                "tredjedel*", "dussin*",
            ),
            scales=(
                ("tusen", 3), ("miljon*", 6), ("mn", 6), ("miljard*", 9), ("mdr", 9),
                ("biljon*", 12),
            ),
        ),
        LanguageInfo(
            "fr", "French", "Français", ("FRENCH",), "french", True,
            _months(
                "janvier|février|mars|avril|mai|juin|juillet|août|septembre|octobre|"
                "novembre|décembre"
            ),
            ("pas mentionné", "pas précisé", "pas indiqué", "aucune information",
             "ne mentionne", "ne précise", "n'ai pas trouvé", "ne contiennent pas"),
            ("et ", "qu'en est-il", "et pour", "et en ce qui concerne"),
            (),
            ("il", "elle", "ils", "elles", "leur", "leurs", "y", "celui-ci", "celle-ci"),
            definite=("le", "la", "les"),
            amount_questions=(
                "combien", "quel pourcentage", "quelle part", "quelle proportion", "quel âge",
                "quel montant", "quel nombre",
            ),
            numerals=(
                "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix",
                "onze", "douze", "vingt*", "trente", "quarante", "cinquante", "cent*",
                "mille", "million*", "milliard*", "moitié", "tiers", "quart", "douzaine*",
            ),
            scales=(
                ("mille", 3), ("million*", 6), ("milliard*", 9), ("md", 9), ("mds", 9),
                ("billion*", 12),
            ),
        ),
        LanguageInfo(
            "es", "Spanish", "Español", ("SPANISH",), "spanish", True,
            _months(
                "enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre setiembre|"
                "octubre|noviembre|diciembre"
            ),
            ("no se menciona", "no se especifica", "no se indica", "no hay información",
             "no mencionan", "no encontré", "no contienen"),
            ("y ", "¿y ", "qué hay de", "¿qué hay de", "y en cuanto a"),
            (),
            ("él", "ella", "ellos", "ellas", "su", "sus", "allí", "allá", "eso", "este",
             "esta"),
            definite=("el", "la", "los", "las"),
            amount_questions=(
                "cuánt*", "qué porcentaje", "qué proporción", "qué edad", "qué cantidad",
            ),
            numerals=(
                "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "diez",
                "once", "doce", "veint*", "treinta", "cuarenta", "cincuenta", "cien*", "mil",
                "millón", "millones", "mitad", "tercio", "docena*",
            ),
            scales=(
                ("mil millones", 9), ("mil", 3), ("millón", 6), ("millones", 6), ("billón", 12),
                ("billones", 12),
            ),
        ),
        LanguageInfo(
            "uk", "Ukrainian", "Українська", ("UKRAINIAN",), None, True,
            _months(
                "січня січень|лютого лютий|березня березень|квітня квітень|травня травень|"
                "червня червень|липня липень|серпня серпень|вересня вересень|"
                "жовтня жовтень|листопада листопад|грудня грудень"
            ),
            ("не вказ", "не згаду", "не повідомля", "немає інформації", "немає відповіді",
             "не містять"),
            ("а ", "і ", "й ", "а як щодо", "а що"),
            (),
            ("він", "вона", "воно", "вони", "його", "її", "їх", "там", "цей", "ця", "ці"),
            amount_questions=(
                "скільки", "який відсоток", "яка частка", "яку частку", "який обсяг",
                "яку суму",
            ),
            numerals=(
                "один*", "одн*", "два", "дві", "двох*", "три", "трьох*", "чотир*", "п'ят*",
                "п’ят*", "шіст*", "сім", "сем*", "вісім*", "восьм*", "дев'ят*", "дев’ят*",
                "десят*", "сто", "сот*", "тисяч*", "мільйон*", "мільярд*", "половин*",
            ),
            scales=(
                ("тис", 3), ("тисяч*", 3), ("млн", 6), ("мільйон*", 6), ("млрд", 9),
                ("мільярд*", 9), ("трлн", 12), ("трильйон*", 12),
            ),
        ),
        LanguageInfo(
            "pl", "Polish", "Polski", ("POLISH",), "polish", True,
            _months(
                "stycznia styczeń|lutego luty|marca marzec|kwietnia kwiecień|maja maj|"
                "czerwca czerwiec|lipca lipiec|sierpnia sierpień|września wrzesień|"
                "października październik|listopada listopad|grudnia grudzień"
            ),
            ("nie wspomniano", "nie podano", "nie określono", "brak informacji",
             "nie zawierają", "nie znalazłem", "nie znalazłam"),
            ("a ", "i ", "a co z", "co z", "a jak"),
            (),
            ("on", "ona", "ono", "oni", "one", "jego", "jej", "ich", "tam", "ten", "ta", "te"),
            amount_questions=(
                r"re:(?<!na )(?<!o )ile", "ilu", "jaki procent", "jaka część", "jaką część",
                "jaki odsetek", "jaki udział",
            ),
            numerals=(
                "jeden", "jedna", "jedno", "dwa", "dwie", "dwóch", "trzy", "trzech", "czter*",
                "pięć*", "pięci*", "sześć*", "sześci*", "siedem", "siedmi*", "osiem", "ośmi*",
                "dziewięć*", "dziewięci*", "dziesięć*", "dziesięci*", "sto", "tysi*",
                "milion*", "miliard*", "połow*",
            ),
            scales=(
                ("tys", 3), ("tysiąc*", 3), ("tysięc*", 3), ("mln", 6), ("milion*", 6),
                ("mld", 9), ("miliard*", 9), ("bilion*", 12),
            ),
        ),
        LanguageInfo(
            "ja", "Japanese", "日本語", ("JAPANESE",), None, False,
            _months("|".join(f"{n}月" for n in range(1, 13))),
            ("記載されていません", "記載がありません", "言及されていません", "情報はありません",
             "見つかりませんでした", "含まれていません"),
            ("では", "じゃあ", "それでは", "また"),
            ("は？", "は?", "はどう？", "はどうですか"),
            ("それ", "その", "そこ", "彼", "彼女"),
            amount_questions=(
                "re:いくつ(?!か)", "re:いくら(?!で?も)", "re:何[人社件個](?!か)", "何カ所",
                "何か所", "何パーセント", "何%", "何％", "どのくらい", "どれくらい", "何歳",
            ),
            numerals=("一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "百",
                      "千", "万", "億", "半"),
            spaced=False,
            scales=(
                ("千", 3), ("万", 4), ("億", 8), ("兆", 12),
            ),
        ),
        LanguageInfo(
            "zh", "Chinese", "中文", ("CHINESE",), None, False,
            _months("|".join(f"{n}月" for n in range(1, 13))),
            ("没有提到", "未提及", "没有提及", "未说明", "没有信息", "没有找到", "未找到",
             "不包含"),
            ("那", "那么", "还有"),
            ("呢？", "呢?", "呢"),
            ("它", "他", "她", "他们", "那里", "其"),
            amount_questions=(
                "re:(?<!或)多少(?!有些|有点)", "re:(?<!哪)几[个家位名项次岁]",
                "re:多大(?!程度)", "多高", "多久", "百分之几",
            ),
            numerals=("一", "二", "两", "三", "四", "五", "六", "七", "八", "九", "十",
                      "百", "千", "万", "亿", "半"),
            spaced=False,
            scales=(
                ("千", 3), ("万", 4), ("亿", 8), ("万亿", 12),
            ),
        ),
    )
}  # fmt: skip

# The five languages of the seed corpus and of the golden sets.
CORE_LANGUAGES = ("en", "vi", "ru", "de", "no")


def language_name(code: str) -> str:
    """The English name of a language for the prompt; English for an unknown code."""
    info = LANGUAGES.get(code)
    return info.name if info else "English"


def not_found_phrases() -> tuple[str, ...]:
    """Every language's phrases for "the sources do not say" (a reply in any language
    may use them: the model does not always answer in the language asked)."""
    return tuple(phrase for info in LANGUAGES.values() for phrase in info.not_found)


def month_spellings() -> dict[str, int]:
    """Every spelling of a month name in any language -> its number (1-12)."""
    return {
        spelling: number
        for info in LANGUAGES.values()
        for number, spellings in enumerate(info.months, start=1)
        for spelling in spellings
    }


@cache
def definite_articles() -> frozenset[str]:
    """Every language's definite articles (lower case)."""
    return frozenset(word for info in LANGUAGES.values() for word in info.definite)


@cache
def amount_question_patterns() -> dict[str, re.Pattern[str]]:
    """Per language, how a question asks for an amount (LanguageInfo.amount_questions)."""
    return {
        code: _words_pattern(info.amount_questions, info.spaced) for code, info in LANGUAGES.items()
    }


@cache
def numeral_patterns() -> dict[str, re.Pattern[str]]:
    """Per language, its number words (LanguageInfo.numerals)."""
    return {code: _words_pattern(info.numerals, info.spaced) for code, info in LANGUAGES.items()}


@cache
def scale_patterns() -> tuple[tuple[tuple[re.Pattern[str], int], ...], ...]:
    """Per language, its scale words (LanguageInfo.scales) as patterns that match right
    after a figure, longest first ("nghìn tỷ" before "nghìn"), with their powers of ten."""
    return tuple(
        tuple(
            (re.compile(r"\s*" + _words_pattern((word,), info.spaced).pattern, re.I), power)
            for word, power in sorted(info.scales, key=lambda scale: -len(scale[0]))
        )
        for info in LANGUAGES.values()
    )


def _words_pattern(words: tuple[str, ...], spaced: bool) -> re.Pattern[str]:
    """Whole words or phrases in a case-insensitive pattern; in a language written
    without spaces, anywhere. The markers are LanguageInfo.amount_questions'."""
    forms = []
    for word in words:
        if word.startswith("re:"):
            forms.append(word.removeprefix("re:"))
            continue
        form = r"\s+".join(map(re.escape, word.removesuffix("*").split()))
        forms.append(form + (r"\w*" if word.endswith("*") else ""))
    body = "|".join(sorted(forms, key=len, reverse=True))
    # "-" joins words: "how long" is not in "how long-term"
    return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])" if spaced else f"(?:{body})", re.I)


def stemmer_names() -> dict[str, str]:
    """ISO code -> PyStemmer algorithm, for the languages that have one."""
    return {code: info.stemmer for code, info in LANGUAGES.items() if info.stemmer}
