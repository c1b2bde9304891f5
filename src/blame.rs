//! Who is at fault: the one place where the evidence of a run (what the
//! broker answered to a CONNECT, the reason codes it sent, connections it
//! dropped, PUBACKs that never came, and which message was alone in flight)
//! becomes a verdict: the link, the broker, this message, or not known yet.
//! `session` and `drain` gather the evidence and act on the verdicts; they
//! decide nothing themselves. README ("What is guaranteed") states these
//! rules in the operator's words; each has a unit test below.
//!
//! The rules: the protocol is decided only by a protocol answer (an MQTT
//! 3.1.1 CONNACK or CONNACK 0x84 to an MQTT 5 CONNECT, or the same drop or
//! silence followed by an immediate 3.1.1 CONNACK on consecutive attempts),
//! and a broker that once answered MQTT 5 is only moved to 3.1.1 by a
//! protocol answer. A message is charged only on proof: a reason code that
//! names it while it is the only one being handled, or its failing alone
//! followed by another message accepted by the same broker in the same run.
//! Until then it is a suspect, and the messages after it go alone
//! (probation), so that a run of bad messages is crossed; the search is
//! bounded by [`MAX_UNPROVEN`] failures in a row and by the run's time.

/// Messages failing alone in a row, with no message accepted in between,
/// after which the broker (or the link), not a message, is at fault: the
/// run ends and charges nobody. Above the six readings of a frame, so that
/// a node whose every reading fails is crossed.
pub const MAX_UNPROVEN: usize = 10;
/// Of those, failures by silence (no PUBACK within `--ack-timeout`) in a
/// row that end the search: each costs a whole `--ack-timeout`, and a link
/// that swallows acknowledgements must cost only a few.
pub const MAX_SILENT: usize = 3;

/// How many connection attempts the protocol choice makes at most.
pub const MAX_PROTOCOL_ATTEMPTS: u32 = 3;

/// Who is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody charged: the connection, or a broker that cannot serve now.
    Link,
    /// The message at hand: charged an attempt.
    Message,
    /// The message at hand is a suspect: charged only if another message
    /// is accepted later in this run; the messages after it go alone.
    NotKnownYet,
}

/// How a connection ended with messages in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    /// The broker's DISCONNECT reason code, if it sent one.
    pub disconnect: Option<u8>,
    /// Messages in flight when it ended (after reading what the broker
    /// said before it closed).
    pub in_flight: usize,
    /// The message in flight was the first PUBLISH of its connection.
    pub first_on_connection: bool,
    /// The broker's last PUBACK on this connection refused its message
    /// (mosquitto with `max_queued_messages 0` closes after a refusal).
    pub after_refusal: bool,
}

/// Whether a DISCONNECT reason code points at the message being handled.
pub fn names_message(code: u8) -> bool {
    matches!(code, 0x87 | 0x90 | 0x95 | 0x99)
}

/// The verdict on the oldest message in flight when a connection ended.
pub fn loss(l: Loss) -> Verdict {
    if l.in_flight == 0 || l.after_refusal {
        return Verdict::Link;
    }
    match l.disconnect {
        // The broker named the message, and only one was being handled.
        Some(code) if names_message(code) && l.in_flight == 1 => Verdict::Message,
        // Named, but in a full window: the oldest is the likely one; sent
        // alone next, it is proven or cleared.
        Some(code) if names_message(code) => Verdict::NotKnownYet,
        Some(_) => Verdict::Link,
        // Alone, the first of its connection: it may be the message, or
        // a broker or link that fails every connection at that point.
        None if l.in_flight == 1 && l.first_on_connection => Verdict::NotKnownYet,
        // Several in flight, or not the first on its connection: the
        // messages in doubt go alone, each first on a new connection.
        None => Verdict::Link,
    }
}

/// The in-run evidence about messages that failed alone: who is charged
/// once the broker proves it works, and when to stop looking.
#[derive(Debug)]
pub struct Trial<T> {
    unproven: Vec<T>,
    in_a_row: usize,
    silent_in_a_row: usize,
    accepted: u64,
}

impl<T> Default for Trial<T> {
    fn default() -> Trial<T> {
        Trial {
            unproven: Vec::new(),
            in_a_row: 0,
            silent_in_a_row: 0,
            accepted: 0,
        }
    }
}

impl<T> Trial<T> {
    /// A message failed alone ([`Verdict::NotKnownYet`]): the connection
    /// dropped, or (`silent`) no PUBACK came in time. A `known` suspect
    /// (it failed alone in an earlier run) failing again by a drop says
    /// nothing new about the broker: it does not count toward the bound,
    /// so a backlog that starts with many bad rows is still crossed; by
    /// silence it does, as each costs a whole `--ack-timeout`.
    pub fn failed_alone(&mut self, t: T, silent: bool, known: bool) {
        self.unproven.push(t);
        if silent {
            self.silent_in_a_row += 1;
        }
        if !known {
            self.in_a_row += 1;
        }
    }

    /// The broker accepted a message: it and the link work, so the
    /// messages that failed alone before were at fault. Returns them, to
    /// be charged.
    pub fn accepted(&mut self) -> Vec<T> {
        self.accepted += 1;
        self.in_a_row = 0;
        self.silent_in_a_row = 0;
        std::mem::take(&mut self.unproven)
    }

    /// Too many failures in a row: the broker or the link is at fault.
    pub fn exhausted(&self) -> bool {
        self.in_a_row >= MAX_UNPROVEN || self.silent_in_a_row >= MAX_SILENT
    }

    /// Messages are being sent alone: one failed and no message was
    /// accepted since.
    pub fn on_probation(&self) -> bool {
        !self.unproven.is_empty()
    }

    /// Messages that failed alone since the last one accepted.
    pub fn unproven_count(&self) -> usize {
        self.unproven.len()
    }

    /// The broker accepted nothing in this run, and messages failed alone:
    /// it takes connections but no messages.
    pub fn takes_nothing(&self) -> bool {
        self.accepted == 0 && !self.unproven.is_empty()
    }

    /// Every message that failed alone since the last one accepted was a
    /// known suspect: nothing says yet whether they or the broker are at
    /// fault.
    pub fn only_known(&self) -> bool {
        self.in_a_row == 0 && !self.unproven.is_empty()
    }

    /// At the end of the run: the messages never proven guilty (suspects
    /// for the next run, charged nothing).
    pub fn unproven(&mut self) -> Vec<T> {
        std::mem::take(&mut self.unproven)
    }
}

/// What the broker did with an MQTT 5 CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V5Answer {
    /// An MQTT 5 CONNACK (success or refusal other than 0x84).
    Mqtt5,
    /// A protocol answer: CONNACK 0x84, or a CONNACK in 3.1.1's format.
    Unsupported,
    /// The connection was closed or reset without a CONNACK.
    Dropped,
    /// No answer within the connect timeout.
    Silent,
    /// Nothing listens, TLS failed, ...: not about the protocol.
    Unreachable,
}

/// What to do after an MQTT 5 CONNECT under `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVerdict {
    /// Use MQTT 5 (or report its refusal).
    Mqtt5,
    /// The broker speaks only 3.1.1: connect with it, remember it.
    Fallback,
    /// See whether it answers a 3.1.1 CONNECT at once; that, twice in a
    /// row after the same answer, decides.
    Probe311,
    /// Try MQTT 5 again: the answer was a fault, not about the protocol.
    Retry,
    /// Give up: report the fault.
    Fail,
}

/// The protocol verdict on `answer` to an MQTT 5 CONNECT. `remembered_v5`:
/// this broker answered MQTT 5 before. `before`: the answer on the previous
/// attempt of this run, when a 3.1.1 CONNECT right after it was accepted.
/// `attempt`: 1 for the first.
pub fn protocol(
    answer: V5Answer,
    remembered_v5: bool,
    before: Option<V5Answer>,
    attempt: u32,
) -> ProtocolVerdict {
    match answer {
        V5Answer::Mqtt5 => ProtocolVerdict::Mqtt5,
        V5Answer::Unsupported => ProtocolVerdict::Fallback,
        V5Answer::Unreachable => ProtocolVerdict::Fail,
        V5Answer::Dropped | V5Answer::Silent => {
            if attempt >= MAX_PROTOCOL_ATTEMPTS {
                ProtocolVerdict::Fail
            } else if remembered_v5 {
                // It earned MQTT 5 with a CONNACK: a drop is a fault, tried
                // once more.
                if attempt == 1 {
                    ProtocolVerdict::Retry
                } else {
                    ProtocolVerdict::Fail
                }
            } else if before == Some(answer) {
                ProtocolVerdict::Fallback
            } else {
                ProtocolVerdict::Probe311
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(disconnect: Option<u8>, in_flight: usize, first: bool) -> Loss {
        Loss {
            disconnect,
            in_flight,
            first_on_connection: first,
            after_refusal: false,
        }
    }

    #[test]
    fn a_disconnect_naming_the_only_message_handled_charges_it() {
        for code in [0x87, 0x90, 0x95, 0x99] {
            assert_eq!(loss(lost(Some(code), 1, false)), Verdict::Message);
            assert_eq!(loss(lost(Some(code), 1, true)), Verdict::Message);
        }
    }

    #[test]
    fn a_disconnect_naming_a_message_in_a_full_window_makes_the_oldest_a_suspect() {
        assert_eq!(loss(lost(Some(0x95), 64, false)), Verdict::NotKnownYet);
    }

    #[test]
    fn a_disconnect_that_names_no_message_charges_nobody() {
        for code in [0x8B, 0x8E, 0x97, 0x89, 0x80] {
            assert_eq!(loss(lost(Some(code), 1, true)), Verdict::Link);
        }
    }

    #[test]
    fn a_drop_with_one_message_alone_first_on_its_connection_is_not_known_yet() {
        assert_eq!(loss(lost(None, 1, true)), Verdict::NotKnownYet);
        // Not the first: the link may die at that point of every
        // connection.
        assert_eq!(loss(lost(None, 1, false)), Verdict::Link);
        assert_eq!(loss(lost(None, 5, true)), Verdict::Link);
        assert_eq!(loss(lost(None, 0, true)), Verdict::Link);
    }

    #[test]
    fn a_drop_right_after_a_refusal_is_the_brokers_way_and_charges_nobody_else() {
        let mut l = lost(None, 1, true);
        l.after_refusal = true;
        assert_eq!(loss(l), Verdict::Link);
    }

    #[test]
    fn a_message_failing_alone_is_charged_only_when_a_later_one_is_accepted() {
        let mut t = Trial::default();
        t.failed_alone(7, false, false);
        t.failed_alone(8, true, false);
        assert!(t.on_probation());
        assert!(t.takes_nothing());
        assert_eq!(t.accepted(), vec![7, 8]);
        assert!(!t.on_probation());
        t.failed_alone(9, false, false);
        assert!(!t.takes_nothing());
        // The run ends before any proof: nobody is charged.
        assert_eq!(t.unproven(), vec![9]);
        assert!(t.accepted().is_empty());
    }

    #[test]
    fn a_run_of_bad_messages_is_crossed_up_to_a_bound_counted_in_a_row() {
        let mut t = Trial::default();
        for i in 0..MAX_UNPROVEN - 1 {
            t.failed_alone(i, false, false);
            assert!(!t.exhausted());
        }
        assert_eq!(t.accepted().len(), MAX_UNPROVEN - 1);
        for i in 0..MAX_UNPROVEN {
            assert!(!t.exhausted());
            t.failed_alone(i, false, false);
        }
        assert!(t.exhausted());
    }

    #[test]
    fn known_suspects_dropping_the_connection_again_do_not_use_up_the_search() {
        let mut t = Trial::default();
        for i in 0..3 * MAX_UNPROVEN {
            t.failed_alone(i, false, true);
        }
        assert!(!t.exhausted());
        assert!(t.takes_nothing());
        assert!(t.only_known());
        for i in 0..MAX_SILENT {
            t.failed_alone(i, true, true);
        }
        assert!(t.exhausted());
    }

    #[test]
    fn a_link_swallowing_acknowledgements_costs_only_a_few_ack_timeouts() {
        let mut t = Trial::default();
        t.failed_alone(1, false, false);
        for i in 0..MAX_SILENT {
            assert!(!t.exhausted());
            t.failed_alone(i, true, false);
        }
        assert!(t.exhausted());
        t.accepted();
        assert!(!t.exhausted());
    }

    #[test]
    fn only_a_protocol_answer_decides_the_protocol_at_once() {
        use ProtocolVerdict as P;
        use V5Answer as A;
        assert_eq!(protocol(A::Mqtt5, false, None, 1), P::Mqtt5);
        assert_eq!(protocol(A::Unsupported, false, None, 1), P::Fallback);
        assert_eq!(protocol(A::Unsupported, true, None, 1), P::Fallback);
        assert_eq!(protocol(A::Unreachable, false, None, 1), P::Fail);
        // A single drop or silence is not an answer: see whether 3.1.1
        // answers, then ask again.
        assert_eq!(protocol(A::Dropped, false, None, 1), P::Probe311);
        assert_eq!(protocol(A::Silent, false, None, 1), P::Probe311);
        // The same answer on the next attempt, 3.1.1 accepted both times.
        assert_eq!(
            protocol(A::Dropped, false, Some(A::Dropped), 2),
            P::Fallback
        );
        assert_eq!(protocol(A::Silent, false, Some(A::Silent), 2), P::Fallback);
        // A different one is not a repeat.
        assert_eq!(protocol(A::Silent, false, Some(A::Dropped), 2), P::Probe311);
        assert_eq!(protocol(A::Dropped, false, None, 3), P::Fail);
    }

    #[test]
    fn a_broker_remembered_as_mqtt_5_is_never_downgraded_by_drops_or_silence() {
        use ProtocolVerdict as P;
        use V5Answer as A;
        assert_eq!(protocol(A::Dropped, true, None, 1), P::Retry);
        assert_eq!(protocol(A::Silent, true, None, 1), P::Retry);
        // Twice: the fault it is, reported.
        assert_eq!(protocol(A::Dropped, true, None, 2), P::Fail);
        assert_eq!(protocol(A::Silent, true, None, 2), P::Fail);
    }
}
