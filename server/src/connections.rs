//! How many connections one client address may hold at once.
//!
//! The server serves at most `--max-connections` connections (what its open-files limit
//! allows); past that it stops accepting. One client trickling bodies over 1,100 connections
//! held every slot for the minute a slow body is allowed, and ordinary readers got nothing. So
//! each connection is counted against its peer address when it opens (`on_connect`), and a
//! request on a connection past that address's share is answered at once, before its body is
//! read, with 429 and the connection closed: one address keeps at most its share of the server,
//! however many connections it opens.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Extensions, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

use crate::error::AppError;

/// Open connections per peer address.
#[derive(Debug)]
pub struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

/// One connection, counted while it lives (kept in the connection's extensions).
#[derive(Debug)]
pub struct Counted {
    ip: IpAddr,
    /// Opened past its address's share.
    over: bool,
    registry: Arc<PerAddress>,
}

impl PerAddress {
    /// At most `max` connections per address.
    pub fn new(max: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress { open: Mutex::new(HashMap::new()), max })
    }

    /// Counts a new connection from `ip`.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Counted {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        *n += 1;
        Counted { ip, over: *n > self.max, registry: Arc::clone(self) }
    }

    /// For `HttpServer::on_connect`: counts the connection's peer.
    pub fn on_connect(self: &Arc<Self>, conn: &dyn std::any::Any, ext: &mut Extensions) {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
            && let Ok(peer) = tcp.peer_addr()
        {
            ext.insert(self.enter(peer.ip()));
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The middleware: a request on a connection past its address's share is refused before
/// anything else is done with it, and the connection closed.
pub async fn share(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let over = req.conn_data::<Counted>().map(|c| (c.over, c.registry.max));
    if let Some((true, max)) = over {
        let e = AppError::too_many(
            "too_many_connections",
            format!("your address has more than {max} connections open to this server; close some"),
            5,
        );
        let mut res = actix_web::ResponseError::error_response(&e);
        res.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
        return Ok(req.into_response(res));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_past_its_share_is_marked_and_the_count_goes_back_down() {
        let r = PerAddress::new(2);
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = r.enter(a);
        let second = r.enter(a);
        let third = r.enter(a);
        assert!(!first.over && !second.over && third.over);
        assert!(!r.enter(b).over, "another address has its own share");
        drop(third);
        drop(second);
        assert!(!r.enter(a).over, "closed connections give their place back");
    }
}
