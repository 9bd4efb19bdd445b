//! The no-LLM last resort: an answer composed from the retrieved passages, with citations.
//!
//! Always available, so a turn ends with something useful when every model is down or none is
//! configured. It picks the sentences of the sources that share the most words with the
//! question and cites each as `[n]`.

use std::collections::{HashSet, VecDeque};

use super::{ChatRequest, Source, StreamEvent, UpstreamFinish};

/// Model name reported in `start` and `metrics`.
pub const MODEL: &str = "extractive";
const MAX_SENTENCES: usize = 3;

/// A finished answer replayed word by word, like any stream.
pub struct ExtractiveStream {
    pending: VecDeque<StreamEvent>,
}

impl ExtractiveStream {
    pub async fn next(&mut self) -> Option<Result<StreamEvent, super::ProviderError>> {
        self.pending.pop_front().map(Ok)
    }
}

/// Composes the answer for the request's question and sources.
pub fn answer(req: &ChatRequest) -> ExtractiveStream {
    let text = compose(&req.query, &req.sources);
    let mut pending: VecDeque<StreamEvent> = split_keep_spaces(&text)
        .into_iter()
        .map(StreamEvent::Delta)
        .collect();
    pending.push_back(StreamEvent::Finish(UpstreamFinish::Stop));
    ExtractiveStream { pending }
}

fn words(s: &str) -> HashSet<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 2)
        .map(str::to_lowercase)
        .collect()
}

fn compose(query: &str, sources: &[Source]) -> String {
    if sources.is_empty() {
        return "No language model is available right now and no documents in this room match \
                the question, so there is nothing to answer from."
            .into();
    }
    let q = words(query);
    let mut scored: Vec<(usize, f32, &Source, &str)> = Vec::new();
    for src in sources {
        for sentence in src.text.split_inclusive(['.', '!', '?', '\n']) {
            let sentence = sentence.trim();
            if sentence.chars().count() < 20 {
                continue;
            }
            let overlap = words(sentence).intersection(&q).count();
            scored.push((overlap, src.score, src, sentence));
        }
    }
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)));
    let picked: Vec<_> = scored.into_iter().take(MAX_SENTENCES).collect();
    if picked.is_empty() {
        let s = &sources[0];
        return format!(
            "From the documents (no language model available): {} [{}]",
            s.text.chars().take(300).collect::<String>(),
            s.n
        );
    }
    let mut out = String::from("From the documents (no language model available): ");
    for (i, (_, _, src, sentence)) in picked.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(sentence);
        out.push_str(&format!(" [{}]", src.n));
    }
    out
}

/// Splits after every space, keeping it: the pieces concatenate back to `text`.
pub fn split_keep_spaces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        cur.push(ch);
        if ch == ' ' {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(n: usize, text: &str) -> Source {
        Source {
            n,
            doc_id: format!("d{n}"),
            title: format!("Doc {n}"),
            section: String::new(),
            page: None,
            chunk: 0,
            text: text.into(),
            score: 1.0 / n as f32,
        }
    }

    #[test]
    fn cites_the_most_relevant_sentences() {
        let sources = [
            src(1, "Cats sleep most of the day. They are small felines."),
            src(
                2,
                "The Eiffel Tower is in Paris, France. It opened in 1889 for the fair.",
            ),
        ];
        let text = compose("When did the Eiffel Tower open?", &sources);
        assert!(text.contains("opened in 1889 for the fair. [2]"), "{text}");
        assert!(text.starts_with("From the documents"));
    }

    #[test]
    fn says_so_without_sources() {
        assert!(compose("anything", &[]).contains("no documents"));
    }
}
