//! Work that splits cleanly, spread over the CPUs: parsing the changed manifest files, computing
//! the Maglev tables a large plan is missing.

/// Threads [`map_on_cpus`] uses at most.
const THREADS_MAX: usize = 8;

/// `f` of each of `items`, in order: on up to [`THREADS_MAX`] threads, each taking a run of
/// consecutive items; on this thread alone when there is one CPU or one item.
pub(crate) fn map_on_cpus<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(THREADS_MAX);
    if items.len() < 2 || threads < 2 {
        return items.iter().map(f).collect();
    }
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|part| s.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        // A thread only runs `f`: it panics only if `f` does, as it would here.
        parts.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_come_in_the_order_of_the_items() {
        let items: Vec<u32> = (0..1000).collect();
        assert_eq!(super::map_on_cpus(&items, |i| i * 2), items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(super::map_on_cpus(&[7u32], |i| i + 1), [8]);
        assert!(super::map_on_cpus(&[] as &[u32], |i| *i).is_empty());
    }
}
