//! A room on its own: ordering and seqs, replay and resync, slow consumers, the prompt queue
//! and the turn lifecycle as the engine drives it through the sink.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::*;
use crate::auth::Principal;
use crate::chat::{TurnOwner, TurnRequest, TurnSink, TurnStart};
use crate::config::RoomsConfig;
use crate::error::ErrorCode;
use crate::protocol::{EventBody, FinishReason, Member, ServerEvent};

/// Local rooms never wait inside `submit_prompt` or `cancel` (they are async for cluster
/// mode): one poll finishes them.
trait Now: std::future::Future + Sized {
    fn now(self) -> Self::Output {
        let mut fut = std::pin::pin!(self);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a local room operation waited"),
        }
    }
}

impl<F: std::future::Future> Now for F {}

struct Fixture {
    room: Room,
    turns: mpsc::Receiver<TurnRequest>,
}

fn room(cfg: RoomsConfig) -> Fixture {
    let (tx, turns) = mpsc::channel(cfg.max_queued_turns);
    let key = RoomKey {
        tenant: "acme".into(),
        name: "general".into(),
    };
    let memory = LocalBackplane::new(&cfg).open(&key);
    Fixture {
        room: Room::new(key, Arc::new(cfg), room::Mode::Local(tx), memory),
        turns,
    }
}

struct Client {
    member: Member,
    handle: MemberHandle,
    rx: mpsc::Receiver<Outbound>,
}

fn client(name: &str, queue: usize) -> Client {
    let (tx, rx) = mpsc::channel(queue);
    Client {
        member: Member {
            session_id: Uuid::new_v4(),
            name: name.into(),
        },
        handle: MemberHandle {
            tx,
            slow: CancellationToken::new(),
        },
        rx,
    }
}

/// Everything queued for the client so far, decoded.
fn drain(c: &mut Client) -> Vec<ServerEvent> {
    let mut out = Vec::new();
    while let Ok(f) = c.rx.try_recv() {
        let ev: ServerEvent = serde_json::from_str(&f.text).unwrap();
        assert_eq!(ev.seq, f.seq, "the frame's seq is the event's");
        assert_eq!(ev.body.kind(), f.kind);
        out.push(ev);
    }
    out
}

fn prompt(from: &Member, text: &str, id: Option<&str>) -> Prompt {
    Prompt {
        from: from.clone(),
        text: text.into(),
        client_msg_id: id.map(str::to_string),
        quality: None,
        use_cache: true,
        trace: None,
    }
}

fn owner() -> TurnOwner {
    TurnOwner {
        principal: Principal {
            tenant: Arc::from("acme"),
            user: Arc::from("u"),
        },
        permit: None,
    }
}

/// `a` joins, asks `text`, and the room's worker begins the turn.
fn running(f: &mut Fixture, a: &Client, text: &str) -> TurnRequest {
    f.room
        .join(a.member.clone(), a.handle.clone(), None)
        .unwrap();
    f.room
        .submit_prompt(prompt(&a.member, text, None), owner())
        .now()
        .unwrap();
    let turn = f.turns.try_recv().unwrap();
    assert!(f.room.begin_turn(&turn, start(CancellationToken::new())));
    turn
}

fn start(cancel: CancellationToken) -> TurnStart<'static> {
    TurnStart {
        model: "m",
        chain: "default",
        cached: None,
        cancel,
    }
}

#[test]
fn every_member_sees_the_same_events_with_increasing_seqs() {
    let f = room(RoomsConfig::default());
    let (mut a, mut b) = (client("a", 64), client("b", 64));
    f.room
        .join(a.member.clone(), a.handle.clone(), None)
        .unwrap();
    f.room
        .join(b.member.clone(), b.handle.clone(), None)
        .unwrap();
    f.room
        .submit_prompt(prompt(&a.member, "hi", None), owner())
        .now()
        .unwrap();
    let seen_a: Vec<_> = drain(&mut a).into_iter().filter_map(|e| e.seq).collect();
    let seen_b: Vec<_> = drain(&mut b).into_iter().filter_map(|e| e.seq).collect();
    assert!(seen_a.windows(2).all(|w| w[0] < w[1]), "{seen_a:?}");
    // b joined after a's presence event (seq 2); from then on both saw the same events.
    assert_eq!(seen_a[seen_a.len() - seen_b.len() + 1..], seen_b[1..]);
}

#[test]
fn a_reconnect_replays_what_was_missed_or_resyncs() {
    let cfg = RoomsConfig {
        replay_events: 4,
        ..RoomsConfig::default()
    };
    let f = room(cfg);
    let mut a = client("a", 64);
    f.room
        .join(a.member.clone(), a.handle.clone(), None)
        .unwrap();
    let seen = drain(&mut a);
    let last = seen.last().and_then(|e| e.seq).unwrap();
    let epoch = seen.iter().find_map(|e| match &e.body {
        EventBody::Resync { snapshot } => Some(snapshot.epoch.clone()),
        _ => None,
    });
    let resume = Resume {
        last_seq: last,
        epoch,
    };
    f.room.leave(a.member.session_id);
    f.room
        .submit_prompt(prompt(&a.member, "one", None), owner())
        .now()
        .unwrap();
    let mut back = client("a", 64);
    f.room
        .join(back.member.clone(), back.handle.clone(), Some(&resume))
        .unwrap();
    let got = drain(&mut back);
    let seqs: Vec<u64> = got.iter().filter_map(|e| e.seq).collect();
    assert_eq!(
        seqs[0],
        last + 1,
        "replay starts right after last_seq: {seqs:?}"
    );
    assert!(matches!(got[1].body, EventBody::Message { .. }));

    for i in 0..10 {
        f.room
            .submit_prompt(prompt(&a.member, &format!("p{i}"), None), owner())
            .now()
            .ok();
    }
    let mut late = client("a", 64);
    f.room
        .join(late.member.clone(), late.handle.clone(), Some(&resume))
        .unwrap();
    let got = drain(&mut late);
    assert!(
        matches!(got[0].body, EventBody::Resync { .. }),
        "too old: {:?}",
        got[0]
    );
}

#[test]
fn a_member_that_cannot_keep_up_is_dropped_and_told_to_resume() {
    let f = room(RoomsConfig::default());
    let mut fast = client("fast", 64);
    let slow = client("slow", 2);
    f.room
        .join(slow.member.clone(), slow.handle.clone(), None)
        .unwrap();
    f.room
        .join(fast.member.clone(), fast.handle.clone(), None)
        .unwrap();
    for i in 0..3 {
        f.room
            .submit_prompt(prompt(&fast.member, &format!("p{i}"), None), owner())
            .now()
            .ok();
    }
    assert!(
        slow.handle.slow.is_cancelled(),
        "the slow session is told to close"
    );
    let presence = drain(&mut fast)
        .into_iter()
        .rev()
        .find_map(|e| match e.body {
            EventBody::Presence { members } => Some(members),
            _ => None,
        });
    assert_eq!(
        presence.map(|m| m.len()),
        Some(1),
        "the others see it leave"
    );
}

#[test]
fn prompts_queue_turns_and_duplicates_are_refused() {
    let mut f = room(RoomsConfig::default());
    let a = client("a", 64);
    let id = f
        .room
        .submit_prompt(prompt(&a.member, "q", Some("m1")), owner())
        .now()
        .unwrap();
    let queued = f.turns.try_recv().unwrap();
    assert_eq!((queued.turn_id, queued.prompt.as_str()), (id, "q"));
    assert!(queued.retrieval && queued.chain.is_none());
    let again = f
        .room
        .submit_prompt(prompt(&a.member, "q", Some("m1")), owner())
        .now();
    assert_eq!(again.err(), Some(ErrorCode::DuplicatePrompt));
}

#[test]
fn a_full_queue_is_room_busy() {
    let cfg = RoomsConfig {
        max_queued_turns: 1,
        ..RoomsConfig::default()
    };
    let f = room(cfg);
    let a = client("a", 64);
    f.room
        .submit_prompt(prompt(&a.member, "1", None), owner())
        .now()
        .unwrap();
    let second = f
        .room
        .submit_prompt(prompt(&a.member, "2", None), owner())
        .now();
    assert_eq!(second.err(), Some(ErrorCode::RoomBusy));
}

#[test]
fn a_finished_turn_joins_the_history_with_its_answer() {
    let mut f = room(RoomsConfig::default());
    let mut a = client("a", 256);
    let turn = running(&mut f, &a, "capital?");
    f.room.delta(turn.turn_id, "Paris".into());
    f.room.finish_turn(turn.turn_id, FinishReason::Stop, false);
    let history = TurnSink::history(&f.room);
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].prompt.as_str(), history[0].answer.as_str()),
        ("capital?", "Paris")
    );
    let evs = drain(&mut a);
    let start_ev = evs.iter().find_map(|e| match &e.body {
        EventBody::Start { prompt_seq, .. } => Some(*prompt_seq),
        _ => None,
    });
    let message_seq = evs
        .iter()
        .find(|e| matches!(e.body, EventBody::Message { .. }))
        .and_then(|e| e.seq);
    assert_eq!(start_ev, message_seq, "start points at its prompt");
    assert!(matches!(
        evs.last().map(|e| &e.body),
        Some(EventBody::End { .. })
    ));
}

#[test]
fn a_turn_cancelled_while_queued_ends_without_starting() {
    let mut f = room(RoomsConfig::default());
    let mut a = client("a", 64);
    f.room
        .join(a.member.clone(), a.handle.clone(), None)
        .unwrap();
    let id = f
        .room
        .submit_prompt(prompt(&a.member, "q", None), owner())
        .now()
        .unwrap();
    f.room.cancel(id).now().unwrap();
    let turn = f.turns.try_recv().unwrap();
    assert!(!f.room.begin_turn(&turn, start(CancellationToken::new())));
    let last = drain(&mut a).pop().map(|e| e.body);
    assert!(matches!(
        last,
        Some(EventBody::End {
            finish_reason: FinishReason::Cancelled,
            ..
        })
    ));
    assert_eq!(
        f.room.cancel(Uuid::new_v4()).now().err(),
        Some(ErrorCode::UnknownTurn)
    );
}

#[test]
fn cancelling_the_running_turn_cancels_its_token() {
    let mut f = room(RoomsConfig::default());
    let a = client("a", 64);
    let id = f
        .room
        .submit_prompt(prompt(&a.member, "q", None), owner())
        .now()
        .unwrap();
    let turn = f.turns.try_recv().unwrap();
    let cancel = CancellationToken::new();
    assert!(f.room.begin_turn(&turn, start(cancel.clone())));
    f.room.cancel(id).now().unwrap();
    assert!(cancel.is_cancelled());
}

#[test]
fn a_room_is_idle_only_when_empty_quiet_and_not_answering() {
    let f = room(RoomsConfig::default());
    let a = client("a", 64);
    f.room
        .join(a.member.clone(), a.handle.clone(), None)
        .unwrap();
    assert!(!f.room.is_idle(std::time::Duration::ZERO), "a member is in");
    f.room.leave(a.member.session_id);
    assert!(f.room.is_idle(std::time::Duration::ZERO));
    assert!(
        !f.room.is_idle(std::time::Duration::from_secs(60)),
        "not quiet long enough"
    );
}

#[test]
fn an_aborted_turn_keeps_its_partial_answer_and_frees_the_room() {
    let mut f = room(RoomsConfig::default());
    let mut a = client("a", 256);
    let turn = running(&mut f, &a, "q");
    f.room.delta(turn.turn_id, "half".into());
    f.room.abort_turn(
        turn.turn_id,
        crate::chat::Rejection::new(ErrorCode::Internal, "bug"),
    );
    let evs = drain(&mut a);
    let tail: Vec<&EventBody> = evs.iter().rev().take(2).map(|e| &e.body).collect();
    assert!(matches!(
        tail[0],
        EventBody::End {
            finish_reason: FinishReason::Error,
            partial: true
        }
    ));
    assert!(matches!(
        tail[1],
        EventBody::Error {
            code: ErrorCode::Internal,
            ..
        }
    ));
    let history = TurnSink::history(&f.room);
    assert_eq!((history.len(), history[0].partial), (1, true));
    // The next turn starts as usual.
    f.room
        .submit_prompt(prompt(&a.member, "q2", None), owner())
        .now()
        .unwrap();
    let next = f.turns.try_recv().unwrap();
    assert!(f.room.begin_turn(&next, start(CancellationToken::new())));
}
