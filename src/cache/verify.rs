//! The check after a semantic match, before a hit is served: two prompts close in meaning
//! can still ask different things, and an embedding's cosine barely sees the difference
//! between "enabled" and "disabled", "30 days" and "3 days", "from A to B" and "from B to
//! A". The threshold only nominates a candidate; these rules decide. Each prompt is reduced
//! once to a [`Signature`] (the cached one at insert), so a check is a few comparisons of
//! short lists, not another model call.

pub use crate::config::SemanticMode;

/// Why a near match was not served (the `reason` label of `confab_cache_rejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Numbers,
    Negation,
    Antonym,
    Entity,
    QuestionWord,
    Order,
    Wording,
}

impl Rejection {
    pub const ALL: [Rejection; 7] = [
        Rejection::Numbers,
        Rejection::Negation,
        Rejection::Antonym,
        Rejection::Entity,
        Rejection::QuestionWord,
        Rejection::Order,
        Rejection::Wording,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Numbers => "numbers",
            Rejection::Negation => "negation",
            Rejection::Antonym => "antonym",
            Rejection::Entity => "entity",
            Rejection::QuestionWord => "question_word",
            Rejection::Order => "order",
            Rejection::Wording => "wording",
        }
    }
}

/// Words that carry no content of their own here.
const STOP: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did",
    "i", "me", "my", "we", "us", "our", "you", "your", "it", "its", "this", "that", "these",
    "those", "in", "on", "at", "for", "with", "and", "or", "as", "can", "could", "would", "should",
    "will", "shall", "may", "might", "must", "please", "tell", "about", "there", "here", "some",
    "any", "so", "if", "then", "also", "just", "have", "has", "had", "s", "he", "she", "they",
    "them", "his", "her", "their", "one's", "very", "really",
];

/// Words that turn a statement or question around.
const NEGATORS: &[&str] = &[
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot",
    "nowhere", "non",
];

/// Question words: "who reports to X" and "whom does X report to" differ in this alone.
const QUESTION: &[&str] = &[
    "who", "whom", "whose", "what", "which", "where", "when", "why", "how",
];

/// Words whose two sides are a relation's arguments ("from A to B", "X of Y", "A than B").
const RELATIONS: &[&str] = &[
    "to", "from", "of", "than", "by", "into", "vs", "versus", "per",
];

/// Words skipped when finding a relation's arguments: determiners only, so "skin from some
/// meat" has the arguments skin and some.
const DETERMINERS: &[&str] = &[
    "a", "an", "the", "his", "her", "its", "their", "my", "your", "our",
];

/// Number words (digits are numbers by themselves).
const NUMBER_WORDS: &[&str] = &[
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "twenty", "thirty", "forty", "fifty", "hundred", "thousand", "million",
    "billion", "dozen", "half", "once", "twice", "first", "second", "third",
];

/// Opposites a semantic match cannot tell apart (compared as stems).
const ANTONYMS: &[(&str, &str)] = &[
    ("enabl", "disabl"),
    ("allow", "deny"),
    ("allow", "block"),
    ("increas", "decreas"),
    ("add", "remov"),
    ("open", "clos"),
    ("start", "stop"),
    ("befor", "after"),
    ("min", "max"),
    ("minimum", "maximum"),
    ("more", "less"),
    ("more", "fewer"),
    ("higher", "lower"),
    ("high", "low"),
    ("import", "export"),
    ("upload", "download"),
    ("encrypt", "decrypt"),
    ("last", "next"),
    ("true", "false"),
    ("off", "on"),
    ("front", "back"),
    ("day", "night"),
    ("young", "old"),
    ("long", "short"),
    ("sit", "stand"),
    ("happy", "sad"),
    ("in", "out"),
    ("over", "under"),
    ("up", "down"),
    ("win", "los"),
    ("buy", "sell"),
    ("accept", "reject"),
    ("includ", "exclud"),
    ("insid", "outsid"),
    ("abov", "below"),
    ("early", "lat"),
    ("old", "new"),
    ("big", "small"),
    ("larg", "small"),
    ("fast", "slow"),
    ("hot", "cold"),
    ("left", "right"),
    ("push", "pull"),
    ("input", "output"),
    ("connect", "disconnect"),
    ("lock", "unlock"),
    ("valid", "invalid"),
    ("public", "privat"),
    ("succe", "fail"),
    ("success", "failur"),
    ("north", "south"),
    ("east", "west"),
    ("best", "worst"),
    ("always", "never"),
    ("men", "women"),
    ("man", "woman"),
    ("boy", "girl"),
    ("enter", "exit"),
    ("arriv", "depart"),
    ("rise", "fall"),
    ("gain", "los"),
    ("love", "hat"),
    ("cheap", "expensiv"),
    ("easy", "hard"),
    ("light", "dark"),
    ("wet", "dry"),
    ("full", "empty"),
    ("black", "white"),
    ("yes", "no"),
    ("same", "different"),
    ("asc", "desc"),
    ("ascend", "descend"),
    ("read", "writ"),
    ("send", "receiv"),
    ("push", "pop"),
    ("get", "set"),
    ("sum", "difference"),
];

/// One word of a prompt.
#[derive(Debug, Clone, PartialEq)]
struct Word {
    text: String,
    /// Capitalised where a sentence does not begin: a name.
    name: bool,
}

/// The words of `text`, lower-cased, "n't" split off as "not", with which were names.
fn words(text: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut start_of_sentence = true;
    let mut cur = String::new();
    let mut cap = false;
    let flush = |cur: &mut String, cap: bool, sos: &mut bool, out: &mut Vec<Word>| {
        if cur.is_empty() {
            return;
        }
        let lower = cur.to_lowercase();
        let name = cap && !*sos;
        match lower.strip_suffix("n't") {
            Some(base) => {
                let base = match base {
                    "ca" => "can",
                    "wo" => "will",
                    "sha" => "shall",
                    b => b,
                };
                out.push(Word {
                    text: base.to_string(),
                    name,
                });
                out.push(Word {
                    text: "not".into(),
                    name: false,
                });
            }
            None => {
                // "what's", "we're", "they'll": the word; its contraction is a stop word.
                let trimmed = lower.trim_matches('\'');
                let base = ["'s", "'re", "'ll", "'ve", "'m", "'d"]
                    .iter()
                    .find_map(|c| trimmed.strip_suffix(c))
                    .unwrap_or(trimmed);
                out.push(Word {
                    text: base.to_string(),
                    name,
                });
            }
        }
        *sos = false;
        cur.clear();
    };
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let next_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        let prev_digit = i > 0 && chars[i - 1].is_ascii_digit();
        let inner = (c == '.' || c == ',') && prev_digit && next_digit;
        let joined =
            c == '-' && !cur.is_empty() && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
        if c.is_alphanumeric() || c == '\'' || inner || joined {
            if cur.is_empty() {
                cap = c.is_uppercase();
            }
            if c != ',' {
                cur.push(c);
            }
        } else {
            flush(&mut cur, cap, &mut start_of_sentence, &mut out);
            if matches!(c, '.' | '?' | '!' | ':' | ';' | '\n') {
                start_of_sentence = true;
            }
        }
    }
    flush(&mut cur, cap, &mut start_of_sentence, &mut out);
    out
}

/// A crude stem: enough that "plays", "playing" and "played" compare equal.
fn stem(w: &str) -> String {
    for suffix in ["ing", "ed", "es", "s", "e"] {
        if let Some(base) = w.strip_suffix(suffix)
            && base.chars().count() >= 3
            && !w.ends_with("ss")
        {
            return base.to_string();
        }
    }
    w.to_string()
}

fn is_number(w: &str) -> bool {
    w.chars().any(|c| c.is_ascii_digit()) || NUMBER_WORDS.contains(&w)
}

/// What the check compares of one prompt; computed once per prompt.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Signature {
    /// Numbers, sorted (digits as written, number words as words).
    numbers: Vec<String>,
    negations: usize,
    /// Question words in order.
    questions: Vec<String>,
    /// Content words (stems) in order, with whether each was a name.
    content: Vec<(String, bool)>,
    /// (left argument, relation word, right argument), stems.
    relations: Vec<(String, String, String)>,
    /// Every word but numbers (stems): opposites hide among function words too ("on" and
    /// "off", "in" and "out").
    all: Vec<(String, bool)>,
}

impl Signature {
    pub fn of(text: &str) -> Self {
        let ws = words(text);
        let mut s = Signature::default();
        for (i, w) in ws.iter().enumerate() {
            let t = w.text.as_str();
            if is_number(t) {
                s.numbers.push(t.to_string());
            } else if NEGATORS.contains(&t) {
                s.negations += 1;
            } else if QUESTION.contains(&t) {
                s.questions.push(t.to_string());
            } else if RELATIONS.contains(&t) {
                let argument = |x: &&Word| !DETERMINERS.contains(&x.text.as_str());
                let left = ws[..i].iter().rev().find(argument);
                let right = ws[i + 1..].iter().find(argument);
                if let (Some(l), Some(r)) = (left, right) {
                    s.relations
                        .push((stem(&l.text), t.to_string(), stem(&r.text)));
                }
            } else if content_word(t) {
                s.content.push((stem(t), w.name));
            }
            if !is_number(t) {
                s.all.push((stem(t), false));
            }
        }
        s.numbers.sort_unstable();
        s
    }
}

fn content_word(t: &str) -> bool {
    !(STOP.contains(&t)
        || NEGATORS.contains(&t)
        || QUESTION.contains(&t)
        || RELATIONS.contains(&t)
        || is_number(t))
}

/// The items of `a` left when each of `b`'s is matched off once.
fn minus<'a>(a: &'a [(String, bool)], b: &[(String, bool)]) -> Vec<&'a (String, bool)> {
    let mut rest: Vec<&str> = b.iter().map(|x| x.0.as_str()).collect();
    a.iter()
        .filter(|x| match rest.iter().position(|r| *r == x.0) {
            Some(i) => {
                rest.swap_remove(i);
                false
            }
            None => true,
        })
        .collect()
}

/// Whether one word is the other's opposite: listed, or made so by a prefix (un-, dis-, non-).
fn opposite(x: &str, y: &str) -> bool {
    let prefixed = |a: &str, b: &str| {
        a.chars().count() >= 3
            && ["un", "dis", "non"]
                .iter()
                .any(|p| b.strip_prefix(p) == Some(a))
    };
    let listed = ANTONYMS.iter().any(|(a, b)| {
        let (a, b) = (stem(a), stem(b));
        (x == a && y == b) || (x == b && y == a)
    });
    listed || prefixed(x, y) || prefixed(y, x)
}

/// Whether a cached prompt (`cached`) asks what `asked` asks, as far as `mode` can tell.
/// Run only on a pair whose embeddings already passed the similarity floor.
pub fn check(cached: &Signature, asked: &Signature, mode: SemanticMode) -> Result<(), Rejection> {
    if mode == SemanticMode::Off {
        return Err(Rejection::Wording);
    }
    if cached.numbers != asked.numbers {
        return Err(Rejection::Numbers);
    }
    if cached.negations != asked.negations {
        return Err(Rejection::Negation);
    }
    let only_cached = minus(&cached.content, &asked.content);
    let only_asked = minus(&asked.content, &cached.content);
    let (gone, new) = (
        minus(&cached.all, &asked.all),
        minus(&asked.all, &cached.all),
    );
    let flipped = gone
        .iter()
        .any(|x| new.iter().any(|y| opposite(&x.0, &y.0)));
    if flipped {
        return Err(Rejection::Antonym);
    }
    if cached.questions != asked.questions {
        return Err(Rejection::QuestionWord);
    }
    if only_cached.iter().chain(&only_asked).any(|x| x.1) {
        return Err(Rejection::Entity);
    }
    let swapped = cached.relations.iter().any(|(l, m, r)| {
        l != r
            && asked
                .relations
                .iter()
                .any(|(l2, m2, r2)| m == m2 && l == r2 && r == l2)
    });
    if swapped {
        return Err(Rejection::Order);
    }
    wording(cached, asked, only_cached.len() + only_asked.len(), mode)
}

/// The last rule: how much other wording `mode` accepts.
fn wording(
    cached: &Signature,
    asked: &Signature,
    changed: usize,
    mode: SemanticMode,
) -> Result<(), Rejection> {
    match mode {
        SemanticMode::Strict => {
            let same = cached
                .content
                .iter()
                .map(|x| &x.0)
                .eq(asked.content.iter().map(|x| &x.0));
            match (same, changed) {
                (true, _) => Ok(()),
                (false, 0) => Err(Rejection::Order),
                (false, _) => Err(Rejection::Wording),
            }
        }
        SemanticMode::Balanced => {
            let longest = cached.content.len().max(asked.content.len()).max(1);
            if changed <= 2 || changed * 2 <= longest {
                Ok(())
            } else {
                Err(Rejection::Wording)
            }
        }
        SemanticMode::Off => Err(Rejection::Wording),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(a: &str, b: &str, mode: SemanticMode) -> Result<(), Rejection> {
        check(&Signature::of(a), &Signature::of(b), mode)
    }

    #[test]
    fn the_reported_pairs_are_told_apart() {
        let m = SemanticMode::Balanced;
        let pairs = [
            (
                "Is single sign-on enabled for the admin console?",
                "Is single sign-on disabled for the admin console?",
                Rejection::Antonym,
            ),
            (
                "How do I convert Celsius to Fahrenheit?",
                "How do I convert Fahrenheit to Celsius?",
                Rejection::Order,
            ),
            (
                "Can I get a refund within 30 days?",
                "Can I get a refund within 3 days?",
                Rejection::Numbers,
            ),
            (
                "Is the export API rate limited?",
                "Is the export API not rate limited?",
                Rejection::Negation,
            ),
            (
                "Who reports to Maria?",
                "Whom does Maria report to?",
                Rejection::QuestionWord,
            ),
            (
                "What is the capital of Australia?",
                "What is the capital of Austria?",
                Rejection::Entity,
            ),
        ];
        for (a, b, why) in pairs {
            assert_eq!(verdict(a, b, m), Err(why), "{a} / {b}");
            assert_eq!(verdict(b, a, m), Err(why), "{b} / {a}");
        }
    }

    #[test]
    fn rewordings_pass() {
        let m = SemanticMode::Balanced;
        for (a, b) in [
            ("How do I reset my password?", "how do i reset my password"),
            ("A man is playing a flute.", "A man plays the flute."),
            (
                "In Python, how do I sort a list?",
                "How do I sort a list in Python?",
            ),
            (
                "Why doesn't the build start?",
                "Why does the build not start?",
            ),
            ("What is the refund policy?", "What's your refund policy?"),
        ] {
            assert_eq!(verdict(a, b, m), Ok(()), "{a} / {b}");
        }
        assert_eq!(
            verdict(
                "In Python, how do I sort a list?",
                "How do I sort a list in Python?",
                SemanticMode::Strict
            ),
            Err(Rejection::Order),
            "strict keeps the order"
        );
        assert!(verdict("a", "a", SemanticMode::Off).is_err());
    }

    #[test]
    fn the_metric_knows_every_reason() {
        let ours: Vec<&str> = Rejection::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(ours, crate::metrics::CACHE_REJECTION_REASONS);
    }

    #[test]
    fn words_split_contractions_and_know_names() {
        let ws = words("Why can't Maria log in? Alice can.");
        let texts: Vec<&str> = ws.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(
            texts,
            ["why", "can", "not", "maria", "log", "in", "alice", "can"]
        );
        let names: Vec<bool> = ws.iter().map(|w| w.name).collect();
        assert_eq!(
            names,
            [false, false, false, true, false, false, false, false]
        );
        assert_eq!(
            Signature::of("It costs 1,500.50 dollars").numbers,
            ["1500.50"]
        );
    }
}
