//! Dialog state for both roles (RFC 3261 section 12): identifiers, route set, CSeq spaces,
//! and construction of in-dialog requests such as BYE and the ACK for a 2xx.

use std::net::SocketAddr;

use crate::sip::endpoint::{CallHandle, Transport};
use rsip::Header;

use crate::sip::message::{
    hdr, serialize_request, uri_has_param, uri_host_port, Method, NameAddr, Request, Response,
};
use crate::sip::transaction::TxId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogState {
    /// INVITE received, no final response yet.
    Early,
    /// 2xx sent, waiting for the ACK.
    WaitAck,
    Confirmed,
    /// Our BYE is in flight.
    Terminating,
}

impl DialogState {
    pub fn name(self) -> &'static str {
        match self {
            DialogState::Early => "ringing",
            DialogState::WaitAck => "waiting for ACK",
            DialogState::Confirmed => "confirmed",
            DialogState::Terminating => "hanging up",
        }
    }
}

/// Which side of the initial INVITE we were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogRole {
    /// We received the INVITE (inbound call).
    Uas,
    /// We sent the INVITE (outbound call).
    Uac,
}

/// A re-INVITE the application has been told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingReInvite {
    pub tx: TxId,
    pub cseq: u32,
    /// A 2xx was sent; waiting for its ACK.
    pub answered: bool,
}

#[derive(Clone, Debug)]
pub struct Dialog {
    pub call: CallHandle,
    pub role: DialogRole,
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    /// Our side as sent in From of our requests (carries our tag): for a UAS the To of the
    /// INVITE plus our tag, for a UAC the From we sent.
    pub local_party: String,
    /// The far side as put in To of our requests (carries their tag): for a UAS the
    /// caller's From, for a UAC the To of the 2xx.
    pub remote_party: String,
    /// Contact URI of the peer: Request-URI of our in-dialog requests.
    pub remote_target: String,
    /// The route set: Record-Route in received order for a UAS (RFC 3261 12.1.1),
    /// reversed for a UAC (12.1.2).
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    pub remote_cseq: u32,
    pub state: DialogState,
    pub transport: Transport,
    /// Where the INVITE came from (UAS) or went to (UAC): next hop when the target is not
    /// an IP literal.
    pub source: SocketAddr,
    /// The initial INVITE server transaction, until it is ACKed or ends (UAS only; the
    /// endpoint tracks a UAC's INVITE client transactions itself).
    pub invite_tx: Option<TxId>,
    pub invite_cseq: u32,
    /// The INVITE had no SDP: the offer goes in our 2xx, the answer comes in the ACK.
    pub late_offer: bool,
    pub reinvite: Option<PendingReInvite>,
    /// `hangup` was called while waiting for the ACK: BYE follows the ACK or its timeout.
    pub hangup_requested: bool,
    /// The stream connection (TCP/TLS, as the shell names it: the peer's address) the
    /// dialog's peer last used; our requests go over it while it is open. `None` over UDP
    /// and once the shell reports it closed.
    pub flow: Option<SocketAddr>,
}

/// Where and how an in-dialog request is sent.
#[derive(Clone, Debug)]
pub struct OutRequest {
    pub payload: Vec<u8>,
    pub destination: SocketAddr,
    pub transport: Transport,
}

impl Dialog {
    /// Dialog state for the UAS side of an initial INVITE (RFC 3261 12.1.1).
    pub fn new_uas(
        call: CallHandle,
        req: &Request,
        local_tag: String,
        source: SocketAddr,
        transport: Transport,
        invite_tx: TxId,
    ) -> Dialog {
        let remote_target = req
            .contact
            .as_ref()
            .map(|c| c.uri.clone())
            .unwrap_or_else(|| req.from.uri.clone());
        Dialog {
            call,
            role: DialogRole::Uas,
            call_id: req.call_id.clone(),
            local_party: format!("{};tag={local_tag}", req.to.raw),
            local_tag,
            remote_tag: req.from.tag.clone(),
            remote_party: req.from.raw.clone(),
            remote_target,
            route_set: req.record_route.clone(),
            local_cseq: 0,
            remote_cseq: req.cseq.seq,
            state: DialogState::Early,
            transport,
            source,
            invite_tx: Some(invite_tx),
            invite_cseq: req.cseq.seq,
            late_offer: req.body.is_empty(),
            reinvite: None,
            hangup_requested: false,
            flow: transport.is_stream().then_some(source),
        }
    }

    /// Dialog state for an INVITE we send (RFC 3261 12.1.2), Early until a 2xx arrives:
    /// `local_party` is our From (with `local_tag`), `remote_party` the To we send.
    #[allow(clippy::too_many_arguments)]
    pub fn new_uac(
        call: CallHandle,
        call_id: String,
        local_tag: String,
        local_party: String,
        remote_party: String,
        request_uri: String,
        destination: SocketAddr,
        transport: Transport,
        invite_cseq: u32,
    ) -> Dialog {
        Dialog {
            call,
            role: DialogRole::Uac,
            call_id,
            local_tag,
            remote_tag: None,
            local_party,
            remote_party,
            remote_target: request_uri,
            route_set: Vec::new(),
            local_cseq: invite_cseq,
            remote_cseq: 0,
            state: DialogState::Early,
            transport,
            source: destination,
            invite_tx: None,
            invite_cseq,
            late_offer: false,
            reinvite: None,
            hangup_requested: false,
            // The connection the shell opens to the next hop for the INVITE.
            flow: transport.is_stream().then_some(destination),
        }
    }

    /// A 2xx to our INVITE confirms the dialog with the state it carries (RFC 3261
    /// 12.1.2): their To (with tag), their Contact as remote target, Record-Route reversed.
    pub fn confirm_uac(&mut self, resp: &Response) {
        self.remote_tag = resp.to.tag.clone();
        self.remote_party = resp.to.raw.clone();
        if let Some(c) = resp.contacts.first() {
            self.remote_target = c.uri.clone();
        }
        self.route_set = resp.record_route.iter().rev().cloned().collect();
        self.state = DialogState::Confirmed;
    }

    /// Key under which in-dialog requests find this dialog: Call-ID + our tag.
    pub fn key(&self) -> (String, String) {
        (self.call_id.clone(), self.local_tag.clone())
    }

    /// The From tag of an in-dialog request must be the far end's tag. A UAC dialog has
    /// none until the 2xx, so nothing matches it before.
    pub fn matches_remote(&self, req: &Request) -> bool {
        match self.role {
            DialogRole::Uas => self.remote_tag == req.from.tag,
            DialogRole::Uac => self.remote_tag.is_some() && self.remote_tag == req.from.tag,
        }
    }

    /// Target refresh (RFC 3261 12.2.2): a re-INVITE's Contact replaces the remote target.
    pub fn refresh_target(&mut self, contact: Option<&NameAddr>) {
        if let Some(c) = contact {
            self.remote_target = c.uri.clone();
        }
    }

    /// Builds an in-dialog request (RFC 3261 12.2.1.1), incrementing our CSeq.
    pub fn build_request(
        &mut self,
        method: Method,
        public_addr: SocketAddr,
        branch: &str,
        user_agent: &str,
    ) -> OutRequest {
        self.local_cseq = self.local_cseq.saturating_add(1).min(i32::MAX as u32);
        let cseq = self.local_cseq;
        self.build(method, cseq, public_addr, branch, user_agent, Vec::new())
    }

    /// The ACK for a 2xx to our INVITE (RFC 3261 13.2.2.4): a new transaction through the
    /// route set with the INVITE's CSeq number; `extra` carries the INVITE's credentials.
    pub fn build_ack(
        &self,
        public_addr: SocketAddr,
        branch: &str,
        user_agent: &str,
        extra: Vec<Header>,
    ) -> OutRequest {
        self.build(
            Method::Ack,
            self.invite_cseq,
            public_addr,
            branch,
            user_agent,
            extra,
        )
    }

    fn build(
        &self,
        method: Method,
        cseq: u32,
        public_addr: SocketAddr,
        branch: &str,
        user_agent: &str,
        extra: Vec<Header>,
    ) -> OutRequest {
        let strict = self
            .route_set
            .first()
            .map(|r| !uri_has_param(&route_uri(r), "lr"))
            .unwrap_or(false);
        let (request_uri, routes): (String, Vec<String>) = if strict {
            // Strict router: it becomes the Request-URI, the remote target goes last.
            let first = self
                .route_set
                .first()
                .map(|r| route_uri(r))
                .unwrap_or_default();
            let mut rest: Vec<String> = self.route_set.iter().skip(1).cloned().collect();
            rest.push(format!("<{}>", self.remote_target));
            (first, rest)
        } else {
            (self.remote_target.clone(), self.route_set.clone())
        };
        let mut headers = vec![hdr(
            "Via",
            format!(
                "SIP/2.0/{} {public_addr};branch={branch};rport",
                self.transport.via_token()
            ),
        )];
        headers.push(hdr("Max-Forwards", "70"));
        for r in &routes {
            headers.push(hdr("Route", r.clone()));
        }
        headers.push(hdr("From", self.local_party.clone()));
        headers.push(hdr("To", self.remote_party.clone()));
        headers.push(hdr("Call-ID", self.call_id.clone()));
        headers.push(hdr("CSeq", format!("{cseq} {method}")));
        headers.push(hdr("User-Agent", user_agent.to_string()));
        headers.extend(extra);
        let payload = serialize_request(&method, &request_uri, headers, &[]);
        OutRequest {
            payload,
            destination: self.destination(),
            transport: self.transport,
        }
    }

    /// Where an in-dialog request goes: over the peer's open connection (TCP/TLS, RFC 3261
    /// 18 / RFC 5923 reuse) while there is one, else to [`Dialog::next_hop`].
    pub fn destination(&self) -> SocketAddr {
        match self.flow {
            Some(conn) if self.transport.is_stream() => conn,
            _ => self.next_hop(),
        }
    }

    /// First route (loose routing) or the remote target; names that are not IP literals
    /// fall back to where the INVITE came from (the sans-IO core does no DNS).
    pub fn next_hop(&self) -> SocketAddr {
        let uri = match self.route_set.first() {
            Some(r) => route_uri(r),
            None => self.remote_target.clone(),
        };
        match uri_host_port(&uri) {
            Some((rsip::Host::IpAddr(ip), port)) => SocketAddr::new(ip, port.unwrap_or(5060)),
            _ => self.source,
        }
    }
}

/// The URI inside a Route/Record-Route entry (`<sip:p;lr>` -> `sip:p;lr`).
fn route_uri(entry: &str) -> String {
    NameAddr::parse(entry, "Route")
        .map(|n| n.uri)
        .unwrap_or_else(|_| entry.trim_matches(['<', '>', ' ']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Limits, Message};

    fn invite(extra: &str) -> Request {
        let text = format!(
            "INVITE sip:svc@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK1\r\n\
             {extra}From: \"Al\" <sip:al@10.0.0.2>;tag=ft\r\nTo: <sip:svc@10.0.0.1>\r\nCall-ID: c1\r\n\
             CSeq: 5 INVITE\r\nContact: <sip:al@10.0.0.2:5070;transport=udp>\r\nContent-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes(), &Limits::default()) {
            Ok(Some(Message::Request(r))) => r,
            other => panic!("{other:?}"),
        }
    }

    fn text(out: &OutRequest) -> String {
        String::from_utf8(out.payload.clone()).unwrap()
    }

    #[test]
    fn bye_without_route_set_goes_to_contact() {
        let req = invite("");
        let src = "10.0.0.9:5060".parse().unwrap();
        let mut d = Dialog::new_uas(
            CallHandle(1),
            &req,
            "lt".into(),
            src,
            Transport::Udp,
            TxId(1),
        );
        assert!(d.late_offer);
        let out = d.build_request(
            Method::Bye,
            "10.0.0.1:5060".parse().unwrap(),
            "z9hG4bKx",
            "wl",
        );
        let t = text(&out);
        assert!(
            t.starts_with("BYE sip:al@10.0.0.2:5070;transport=udp SIP/2.0\r\n"),
            "{t}"
        );
        assert!(t.contains("From: <sip:svc@10.0.0.1>;tag=lt\r\n"));
        assert!(t.contains("To: \"Al\" <sip:al@10.0.0.2>;tag=ft\r\n"));
        assert!(t.contains("CSeq: 1 BYE\r\n"));
        assert!(!t.contains("Route:"));
        assert_eq!(out.destination, "10.0.0.2:5070".parse().unwrap());
    }

    #[test]
    fn loose_route_set_in_record_route_order() {
        let req = invite("Record-Route: <sip:10.0.0.7:5080;lr>, <sip:edge.example;lr>\r\n");
        let src = "10.0.0.9:5060".parse().unwrap();
        let mut d = Dialog::new_uas(
            CallHandle(1),
            &req,
            "lt".into(),
            src,
            Transport::Udp,
            TxId(1),
        );
        let out = d.build_request(
            Method::Bye,
            "10.0.0.1:5060".parse().unwrap(),
            "z9hG4bKx",
            "wl",
        );
        let t = text(&out);
        let r1 = t.find("Route: <sip:10.0.0.7:5080;lr>").unwrap();
        let r2 = t.find("Route: <sip:edge.example;lr>").unwrap();
        assert!(r1 < r2);
        assert!(t.starts_with("BYE sip:al@10.0.0.2:5070;transport=udp SIP/2.0"));
        assert_eq!(out.destination, "10.0.0.7:5080".parse().unwrap());
        let again = d.build_request(
            Method::Bye,
            "10.0.0.1:5060".parse().unwrap(),
            "z9hG4bKy",
            "wl",
        );
        assert!(text(&again).contains("CSeq: 2 BYE"));
    }

    #[test]
    fn strict_router_and_hostname_fallback() {
        let req = invite("Record-Route: <sip:proxy.example>\r\n");
        let src = "10.0.0.9:5060".parse().unwrap();
        let mut d = Dialog::new_uas(
            CallHandle(1),
            &req,
            "lt".into(),
            src,
            Transport::Udp,
            TxId(1),
        );
        let out = d.build_request(
            Method::Bye,
            "10.0.0.1:5060".parse().unwrap(),
            "z9hG4bKx",
            "wl",
        );
        let t = text(&out);
        assert!(t.starts_with("BYE sip:proxy.example SIP/2.0"), "{t}");
        assert!(t.contains("Route: <sip:al@10.0.0.2:5070;transport=udp>"));
        assert_eq!(
            out.destination, src,
            "hostname: fall back to the INVITE source"
        );
    }
}
