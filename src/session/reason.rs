//! What the broker's reason codes mean for frameflush: the one place where
//! a PUBACK's, a DISCONNECT's or a CONNACK's code becomes a decision (mark
//! the rows, refuse the message and go on, stop publishing) and an exit
//! status. MQTT 5 numbers these codes; MQTT 3.1.1's CONNACK return codes
//! are mapped onto the same numbers, so the rest of the program speaks one
//! table. README ("Exit status") and the man page (EXIT STATUS) document
//! this mapping; the tests below hold it.

use crate::error::Exit;

/// The name MQTT 5 gives a reason code, for error lines.
pub fn name(code: u8) -> &'static str {
    match code {
        0x00 => "Success",
        0x10 => "No matching subscribers",
        0x80 => "Unspecified error",
        0x81 => "Malformed Packet",
        0x82 => "Protocol Error",
        0x83 => "Implementation specific error",
        0x84 => "Unsupported Protocol Version",
        0x85 => "Client Identifier not valid",
        0x86 => "Bad User Name or Password",
        0x87 => "Not authorized",
        0x88 => "Server unavailable",
        0x89 => "Server busy",
        0x8A => "Banned",
        0x8B => "Server shutting down",
        0x8C => "Bad authentication method",
        0x8D => "Keep Alive timeout",
        0x8E => "Session taken over",
        0x8F => "Topic Filter invalid",
        0x90 => "Topic Name invalid",
        0x91 => "Packet Identifier in use",
        0x93 => "Receive Maximum exceeded",
        0x94 => "Topic Alias invalid",
        0x95 => "Packet too large",
        0x96 => "Message rate too high",
        0x97 => "Quota exceeded",
        0x98 => "Administrative action",
        0x99 => "Payload format invalid",
        0x9A => "Retain not supported",
        0x9B => "QoS not supported",
        0x9C => "Use another server",
        0x9D => "Server moved",
        0x9E => "Shared Subscriptions not supported",
        0x9F => "Connection rate exceeded",
        0xA1 => "Subscription Identifiers not supported",
        0xA2 => "Wildcard Subscriptions not supported",
        _ => "unknown reason code",
    }
}

/// `0x87 Not authorized`, with the broker's reason string when it sent one.
pub fn describe(code: u8, reason: Option<&str>) -> String {
    match reason {
        Some(r) if !r.is_empty() => format!("0x{code:02X} {} (\"{r}\")", name(code)),
        _ => format!("0x{code:02X} {}", name(code)),
    }
}

/// What a PUBACK's reason code decides for the message it acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Below 0x80: the broker took the message; its rows are marked.
    Accepted,
    /// The broker refused this message: its rows stay unsent, the refusal
    /// counts toward `--max-attempts`, and the run goes on with the rest.
    /// The run's exit status is this one (77 for permission, 65 else).
    Refused(Exit),
    /// The broker wants no more now (quota, busy, rate): nothing more is
    /// published, what is in flight is waited for, and the run ends with
    /// 75. The message is not charged: it is not its fault.
    Stop,
}

/// The verdict on one PUBACK's reason code (MQTT 3.1.1's PUBACK has none:
/// it is always 0x00).
pub fn puback(code: u8) -> Verdict {
    match code {
        c if c < 0x80 => Verdict::Accepted,
        // 0x90 is how ejabberd refuses a topic its ACL denies: a
        // permission, fixed in the broker's ACL (or the --topic template),
        // not in the data.
        0x87 | 0x90 => Verdict::Refused(Exit::NoPerm),
        0x89 | 0x91 | 0x96 | 0x97 => Verdict::Stop,
        _ => Verdict::Refused(Exit::DataErr),
    }
}

/// What to check, for a refused message: where the refusal comes from.
pub fn refusal_hint(code: u8) -> &'static str {
    match code {
        0x87 => " (the broker's ACL does not let this user publish to the topic)",
        0x90 => {
            " (the broker's ACL refuses the topic: ejabberd answers so for a topic its mod_mqtt access_publish denies; else the --topic template makes a name the broker rejects)"
        }
        _ => "",
    }
}

/// What a DISCONNECT the broker sent means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    pub exit: Exit,
    /// The code points at a message (the oldest in flight, since the
    /// broker handles PUBLISHes in order): it is charged an attempt.
    pub charges_message: bool,
}

pub fn disconnect(code: u8) -> Ending {
    let (exit, charges_message) = match code {
        0x87 | 0x90 => (Exit::NoPerm, true),
        0x95 | 0x99 => (Exit::DataErr, true),
        0x8A => (Exit::NoPerm, false),
        0x9B..=0x9D => (Exit::Unavailable, false),
        _ => (Exit::TempFail, false),
    };
    Ending {
        exit,
        charges_message,
    }
}

/// What a CONNACK refusal means: the exit status, and whether it says the
/// broker does not speak the protocol version we asked for.
pub fn connack(code: u8) -> (Exit, bool) {
    match code {
        0x84 => (Exit::Unavailable, true),
        0x85 | 0x86 | 0x87 | 0x8A | 0x8C => (Exit::NoPerm, false),
        _ => (Exit::Unavailable, false),
    }
}

/// What to check, for a CONNACK refusal.
pub fn connack_hint(code: u8) -> &'static str {
    match code {
        0x85 => " (set another client id with --id)",
        0x86 | 0x87 => " (check --username and the password)",
        0x8A => " (the broker has banned this client: ask its operator)",
        0x8C => " (the broker wants another authentication method)",
        0x84 => " (try --protocol-version 311)",
        0x9C | 0x9D => " (the broker points at another server: check --host)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_codes_below_0x80_mark_a_row() {
        for code in 0u8..=255 {
            let accepted = puback(code) == Verdict::Accepted;
            assert_eq!(accepted, code < 0x80, "code {code:#x}");
        }
    }

    #[test]
    fn every_puback_refusal_has_its_documented_exit_status() {
        assert_eq!(puback(0x00), Verdict::Accepted);
        assert_eq!(puback(0x10), Verdict::Accepted);
        assert_eq!(puback(0x87), Verdict::Refused(Exit::NoPerm));
        assert_eq!(puback(0x90), Verdict::Refused(Exit::NoPerm));
        assert!(refusal_hint(0x90).contains("access_publish"));
        for code in [0x80, 0x83, 0x99] {
            assert_eq!(puback(code), Verdict::Refused(Exit::DataErr), "{code:#x}");
        }
        for code in [0x89, 0x91, 0x96, 0x97] {
            assert_eq!(puback(code), Verdict::Stop, "{code:#x}");
        }
    }

    #[test]
    fn a_disconnect_charges_the_message_only_when_its_code_points_at_one() {
        assert_eq!(
            disconnect(0x95),
            Ending {
                exit: Exit::DataErr,
                charges_message: true
            }
        );
        assert_eq!(
            disconnect(0x87),
            Ending {
                exit: Exit::NoPerm,
                charges_message: true
            }
        );
        assert_eq!(
            disconnect(0x90),
            Ending {
                exit: Exit::NoPerm,
                charges_message: true
            }
        );
        for code in [0x80, 0x89, 0x8B, 0x8E, 0x93, 0x97, 0x98] {
            assert_eq!(
                disconnect(code),
                Ending {
                    exit: Exit::TempFail,
                    charges_message: false
                },
                "{code:#x}"
            );
        }
    }

    #[test]
    fn connack_refusals_say_permission_or_unavailable() {
        assert_eq!(connack(0x86), (Exit::NoPerm, false));
        assert_eq!(connack(0x87), (Exit::NoPerm, false));
        assert_eq!(connack(0x84), (Exit::Unavailable, true));
        assert_eq!(connack(0x88), (Exit::Unavailable, false));
        assert_eq!(
            describe(0x87, Some("denied")),
            "0x87 Not authorized (\"denied\")"
        );
    }
}
