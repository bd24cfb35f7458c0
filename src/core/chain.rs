//! Runs a chain of policies through one phase: in order on the request, in reverse on the
//! response, stopping at the first policy that does not continue. A policy waiting on a call-out
//! leaves a cursor behind (phase and position) so the chain resumes exactly there, in whatever
//! phase it was.

use std::rc::Rc;

use crate::policy::{CallResponse, Context, Phase, PhaseSet, Policy, Subject, Verdict};

/// An ordered, immutable list of compiled policies (client → plan → API).
#[derive(Clone, Default)]
pub struct Chain {
    policies: Rc<[Rc<dyn Policy>]>,
    phases: PhaseSet,
}

impl Chain {
    pub fn new(policies: Vec<Rc<dyn Policy>>) -> Chain {
        let phases = policies
            .iter()
            .fold(PhaseSet::NONE, |acc, p| acc.union(p.phases()));
        Chain {
            policies: policies.into(),
            phases,
        }
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether any policy takes part in `phase`.
    pub fn needs(&self, phase: Phase) -> bool {
        self.phases.contains(phase)
    }

    pub fn policies(&self) -> &[Rc<dyn Policy>] {
        &self.policies
    }

    /// The parts one after the other (used to compose client → plan → API).
    pub fn concat(parts: &[&[Rc<dyn Policy>]]) -> Chain {
        Chain::new(parts.iter().flat_map(|p| p.iter().cloned()).collect())
    }
}

/// Calls `policy` for `phase` with its view.
fn call(policy: &dyn Policy, phase: Phase, cx: &mut Context, subject: &mut Subject) -> Verdict {
    match (phase, subject) {
        (Phase::RequestHeaders, Subject::Request(r)) => policy.on_request(cx, r),
        (Phase::ResponseHeaders, Subject::Response(r)) => policy.on_response(cx, r),
        (Phase::RequestBody, Subject::Body(b, h)) => policy.on_request_body(cx, b, h),
        (Phase::ResponseBody, Subject::Body(b, h)) => policy.on_response_body(cx, b, h),
        (
            Phase::RequestData,
            Subject::Data {
                bytes,
                end_of_stream,
            },
        ) => policy.on_request_data(cx, *bytes, *end_of_stream),
        (
            Phase::ResponseData,
            Subject::Data {
                bytes,
                end_of_stream,
            },
        ) => policy.on_response_data(cx, *bytes, *end_of_stream),
        (Phase::Complete, Subject::Complete) => {
            policy.on_complete(cx);
            Verdict::Continue
        }
        // A phase paired with the wrong view is a programming error; do nothing rather than
        // panic on the request path.
        _ => Verdict::Continue,
    }
}

/// Re-borrows a subject for one more call.
fn reborrow<'b>(subject: &'b mut Subject) -> Subject<'b> {
    match subject {
        Subject::Request(r) => Subject::Request(r),
        Subject::Response(r) => Subject::Response(r),
        Subject::Body(b, h) => Subject::Body(b, h),
        Subject::Data {
            bytes,
            end_of_stream,
        } => Subject::Data {
            bytes: *bytes,
            end_of_stream: *end_of_stream,
        },
        Subject::Complete => Subject::Complete,
    }
}

/// Progress through one chain for one request: where a paused phase resumes.
#[derive(Debug, Default)]
pub struct Cursor {
    /// The phase and the chain position of a policy waiting for its call-out.
    waiting: Option<(Phase, usize)>,
    /// The chain position of the policy whose verdict stopped the last phase.
    stopped_at: Option<usize>,
}

impl Cursor {
    /// The chain position of the policy that stopped a phase (a failure or its own answer).
    pub fn stopped_at(&self) -> Option<usize> {
        self.stopped_at
    }

    /// The phase a call-out is pending in, if any.
    pub fn waiting(&self) -> Option<Phase> {
        self.waiting.map(|(phase, _)| phase)
    }

    /// Runs `phase` over the chain from its start. The context's `position` is set per policy.
    pub fn run(
        &mut self,
        chain: &Chain,
        phase: Phase,
        cx: &mut Context,
        subject: Subject,
    ) -> Verdict {
        if !chain.needs(phase) {
            return Verdict::Continue;
        }
        self.run_from(chain, phase, 0, cx, subject)
    }

    /// Hands a call-out's response to the policy that asked for it, then finishes its phase.
    /// `subject` must be the view of that phase (see `waiting`).
    pub fn resume(
        &mut self,
        chain: &Chain,
        response: &CallResponse,
        cx: &mut Context,
        mut subject: Subject,
    ) -> Verdict {
        let Some((phase, position)) = self.waiting.take() else {
            return Verdict::Continue;
        };
        let Some(policy) = chain.policies.get(position) else {
            return Verdict::Continue;
        };
        cx.position = position;
        cx.policy = policy.id();
        match policy.on_call_response(cx, response, reborrow(&mut subject)) {
            Verdict::Continue => {}
            Verdict::CallOut(call) => {
                self.waiting = Some((phase, position));
                return Verdict::CallOut(call);
            }
            other => {
                self.stopped_at = Some(position);
                return other;
            }
        }
        // Step `position` back into iteration order and continue after it.
        let n = chain.policies.len();
        let step = if phase.reversed() {
            n - 1 - position
        } else {
            position
        };
        self.run_from(chain, phase, step + 1, cx, subject)
    }

    fn run_from(
        &mut self,
        chain: &Chain,
        phase: Phase,
        start: usize,
        cx: &mut Context,
        mut subject: Subject,
    ) -> Verdict {
        let n = chain.policies.len();
        for step in start..n {
            let position = if phase.reversed() { n - 1 - step } else { step };
            let Some(policy) = chain.policies.get(position) else {
                break;
            };
            if !policy.phases().contains(phase) || cx.state.skips_body(position, phase) {
                continue;
            }
            cx.position = position;
            cx.policy = policy.id();
            match call(policy.as_ref(), phase, cx, &mut subject) {
                Verdict::Continue => {}
                Verdict::CallOut(call) => {
                    self.waiting = Some((phase, position));
                    return Verdict::CallOut(call);
                }
                stop => {
                    self.stopped_at = Some(position);
                    return stop;
                }
            }
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Request, Response};
    use crate::policy::testing::{request, response, Fixture};
    use crate::policy::{CallOut, FailureType, PolicyFailure};
    use std::cell::RefCell;
    use std::time::Duration;

    /// Records its name into a shared log in every phase; optionally fails or waits.
    struct Probe {
        name: &'static str,
        log: Rc<RefCell<Vec<String>>>,
        fail: bool,
        call_out: bool,
    }

    impl Policy for Probe {
        fn id(&self) -> &'static str {
            "probe"
        }
        fn phases(&self) -> PhaseSet {
            PhaseSet::of(&[Phase::RequestHeaders, Phase::ResponseHeaders])
        }
        fn on_request(&self, _cx: &mut Context, _r: &mut Request) -> Verdict {
            self.log.borrow_mut().push(format!("req:{}", self.name));
            if self.call_out {
                return Verdict::CallOut(CallOut {
                    cluster: "jwks".into(),
                    headers: vec![],
                    body: None,
                    timeout: Duration::from_secs(1),
                    grpc: None,
                });
            }
            if self.fail {
                return Verdict::Fail(PolicyFailure::new(FailureType::Other, 1, "no"));
            }
            Verdict::Continue
        }
        fn on_response(&self, _cx: &mut Context, _r: &mut Response) -> Verdict {
            self.log.borrow_mut().push(format!("resp:{}", self.name));
            Verdict::Continue
        }
        fn on_call_response(&self, _cx: &mut Context, r: &CallResponse, _s: Subject) -> Verdict {
            self.log
                .borrow_mut()
                .push(format!("answer:{}:{}", self.name, r.status));
            Verdict::Continue
        }
    }

    fn chain(specs: &[(&'static str, bool, bool)], log: &Rc<RefCell<Vec<String>>>) -> Chain {
        Chain::new(
            specs
                .iter()
                .map(|&(name, fail, call_out)| {
                    Rc::new(Probe {
                        name,
                        log: log.clone(),
                        fail,
                        call_out,
                    }) as Rc<dyn Policy>
                })
                .collect(),
        )
    }

    #[test]
    fn request_runs_in_order_and_response_in_reverse() {
        let log = Rc::default();
        let c = chain(
            &[
                ("client", false, false),
                ("plan", false, false),
                ("api", false, false),
            ],
            &log,
        );
        let mut f = Fixture::new();
        let mut cursor = Cursor::default();
        let mut req = request("GET", &[]);
        let mut resp = response(200, &[]);
        assert!(matches!(
            cursor.run(
                &c,
                Phase::RequestHeaders,
                &mut f.cx(),
                Subject::Request(&mut req)
            ),
            Verdict::Continue
        ));
        cursor.run(
            &c,
            Phase::ResponseHeaders,
            &mut f.cx(),
            Subject::Response(&mut resp),
        );
        assert_eq!(
            *log.borrow(),
            vec![
                "req:client",
                "req:plan",
                "req:api",
                "resp:api",
                "resp:plan",
                "resp:client"
            ]
        );
    }

    #[test]
    fn the_first_failure_stops_the_chain() {
        let log = Rc::default();
        let c = chain(
            &[("a", false, false), ("b", true, false), ("c", false, false)],
            &log,
        );
        let mut f = Fixture::new();
        let verdict = Cursor::default().run(
            &c,
            Phase::RequestHeaders,
            &mut f.cx(),
            Subject::Request(&mut request("GET", &[])),
        );
        assert!(matches!(verdict, Verdict::Fail(_)));
        assert_eq!(*log.borrow(), vec!["req:a", "req:b"]);
    }

    #[test]
    fn a_call_out_pauses_and_resumes_at_the_same_policy() {
        let log = Rc::default();
        let c = chain(
            &[("a", false, false), ("b", false, true), ("c", false, false)],
            &log,
        );
        let mut f = Fixture::new();
        let mut cursor = Cursor::default();
        let mut req = request("GET", &[]);
        let verdict = cursor.run(
            &c,
            Phase::RequestHeaders,
            &mut f.cx(),
            Subject::Request(&mut req),
        );
        assert!(matches!(verdict, Verdict::CallOut(ref call) if call.cluster == "jwks"));
        assert_eq!(cursor.waiting(), Some(Phase::RequestHeaders));
        let answer = CallResponse {
            status: 200,
            ..CallResponse::default()
        };
        let verdict = cursor.resume(&c, &answer, &mut f.cx(), Subject::Request(&mut req));
        assert!(matches!(verdict, Verdict::Continue));
        assert_eq!(
            *log.borrow(),
            vec!["req:a", "req:b", "answer:b:200", "req:c"]
        );
    }

    #[test]
    fn a_chain_without_response_policies_skips_the_response_phase() {
        struct RequestOnly;
        impl Policy for RequestOnly {
            fn id(&self) -> &'static str {
                "request-only"
            }
            fn phases(&self) -> PhaseSet {
                PhaseSet::of(&[Phase::RequestHeaders])
            }
        }
        let c = Chain::new(vec![Rc::new(RequestOnly)]);
        assert!(c.needs(Phase::RequestHeaders));
        assert!(!c.needs(Phase::ResponseHeaders));
    }
}
