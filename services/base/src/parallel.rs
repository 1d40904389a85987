//! CPU-bound work over many items (parsing or checking a large room's
//! events) spread over the machine's cores, results in the items' order.

/// Fewer items than this are worth no thread.
const SERIAL_BELOW: usize = 64;

/// `f` of every item, in order, on up to as many threads as the machine
/// has cores (this one among them). Blocks until done: call it where
/// blocking is allowed (a blocking task, or briefly from a worker whose
/// work this is anyway).
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    map_owned(items.iter().collect(), f)
}

/// [`map`] taking the items: `f` of every item, in order, on every core
/// (the first part on this thread).
pub fn map_owned<T: Send, R: Send>(mut items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads < 2 || items.len() < SERIAL_BELOW {
        return items.into_iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    // The later parts split off, the first stays here.
    let mut parts = Vec::with_capacity(threads);
    while items.len() > chunk {
        parts.push(items.split_off(items.len() - chunk));
    }
    parts.reverse();
    let f = &f;
    std::thread::scope(|scope| {
        let others: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || part.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut all: Vec<R> = items.into_iter().map(f).collect();
        for other in others {
            match other.join() {
                Ok(part) => all.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_item_is_mapped_once_in_order() {
        for len in [0, 1, 63, 64, 65, 1_000, 1_001] {
            let items: Vec<usize> = (0..len).collect();
            assert_eq!(
                super::map(&items, |i| i * 2),
                (0..len).map(|i| i * 2).collect::<Vec<_>>()
            );
            let texts: Vec<String> = items.iter().map(usize::to_string).collect();
            assert_eq!(
                super::map_owned(texts, |t| t.parse::<usize>().unwrap_or(usize::MAX)),
                items
            );
        }
    }
}
