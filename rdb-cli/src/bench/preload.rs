//! Writing every key once before the measured phase (`--preload`).

use super::*;

/// Writes every key once, with the same clients as the measured phase.
pub(super) async fn preload(
    conns: &[Client],
    args: &BenchArgs,
    value: Vec<u8>,
    empty: &Arc<Histogram<u64>>,
) -> Result<(), String> {
    let shared = Arc::new(Shared::new(Budget::Ops(args.keys), value));
    let next = Arc::new(AtomicU64::new(0));
    let bar = ProgressBar::new(args.keys).with_style(bar_style(
        "preload {elapsed_precise} [{wide_bar}] {pos}/{len} keys  {msg}",
    ));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..args.clients {
        set.spawn(preload_task(
            conns[i % conns.len()].clone(),
            args.keys,
            next.clone(),
            shared.clone(),
            Stats::new(empty.clone()),
        ));
    }
    let total = Stats::new(empty.clone());
    let (total, interrupted) = drive(set, &shared, &bar, total, |bar, ok, errors| {
        bar.set_position(ok + errors);
        let secs = started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { ok as f64 / secs } else { 0.0 };
        bar.set_message(format!("{rate:.0} keys/s  {errors} errors"));
    })
    .await?;
    bar.finish_and_clear();
    if interrupted {
        return Err("interrupted during --preload".into());
    }
    let errors = total.error_total();
    eprintln!(
        "preloaded {} of {} keys in {:.2} s{}",
        total.ops(),
        args.keys,
        started.elapsed().as_secs_f64(),
        if errors > 0 {
            format!(" ({errors} failed)")
        } else {
            String::new()
        }
    );
    for (kind, msg) in &total.first_error {
        eprintln!("first {kind} error during preload: {msg}");
    }
    Ok(())
}
