//! `landfall-strict-aws --port PORT --upstream http://127.0.0.1:MOTO_PORT`: serves the strict
//! AWS layer on 127.0.0.1:PORT in front of moto. Knobs come from `EMULATOR_*` variables
//! (`scripts/aws-emulator.sh start` documents and prints them).

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use landfall_strict_aws::layer::Layer;
use landfall_strict_aws::rules::Knobs;

const USAGE: &str = "usage: landfall-strict-aws --port PORT --upstream URL";

fn main() {
    if let Err(e) = run() {
        eprintln!("landfall-strict-aws: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut port = None;
    let mut upstream = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next(),
            "--upstream" => upstream = args.next(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    let port: u16 = port
        .ok_or(USAGE)?
        .parse()
        .map_err(|_| "--port must be a port number")?;
    let upstream = upstream.ok_or(USAGE)?;
    let knobs = Knobs::from_vars(|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    eprintln!(
        "strict AWS layer on 127.0.0.1:{port} in front of {upstream}; knobs: {}",
        knobs.to_json()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(serve(
        SocketAddr::from(([127, 0, 0, 1], port)),
        upstream,
        knobs,
    ))
}

async fn serve(addr: SocketAddr, upstream: String, knobs: Knobs) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let layer = Arc::new(Layer::new(upstream, knobs));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept failed: {e}");
                continue;
            }
        };
        let layer = Arc::clone(&layer);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let layer = Arc::clone(&layer);
                async move { layer.handle(req).await.map(|a| a.map(Full::new)) }
            });
            // A reset (injected) ends the connection without an answer; nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
