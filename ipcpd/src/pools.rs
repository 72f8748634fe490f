//! Pools mapped by an IPCP for the flows that use them: each opened once, counted per use, and
//! unmapped at its last release (an unprivileged application's per-user pool lives only while
//! a flow has rings in it; a later pool of the same name is a new object, opened anew).

use std::collections::HashMap;
use std::sync::Arc;

use o7s_pool::{Error as PoolError, Pool};

/// Pools by name, with how many uses hold each.
#[derive(Debug, Default)]
pub struct PoolMap {
    pools: HashMap<String, (Arc<Pool>, usize)>,
}

impl PoolMap {
    /// An empty map.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The pool `name`, mapped at its first use and held for one more (undo with
    /// [`PoolMap::release`]).
    ///
    /// # Errors
    /// The pool could not be opened; nothing is held then.
    pub fn acquire(&mut self, name: &str) -> Result<Arc<Pool>, PoolError> {
        if let Some((pool, uses)) = self.pools.get_mut(name) {
            *uses += 1;
            return Ok(pool.clone());
        }
        let pool = Arc::new(Pool::open(name)?);
        self.pools.insert(name.to_owned(), (pool.clone(), 1));
        Ok(pool)
    }

    /// One use of `name` less; the last forgets the pool (it is unmapped once every clone
    /// handed out is dropped). Releasing a name not held does nothing.
    pub fn release(&mut self, name: &str) {
        if let Some((_, uses)) = self.pools.get_mut(name) {
            *uses -= 1;
            if *uses == 0 {
                self.pools.remove(name);
            }
        }
    }

    /// How many uses hold `name` (0 if it is not mapped).
    #[must_use]
    pub fn uses(&self, name: &str) -> usize {
        self.pools.get(name).map_or(0, |(_, uses)| *uses)
    }

    /// How many pools are mapped.
    #[must_use]
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    /// Whether no pool is mapped.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use o7s_pool::{Access, PoolConfig};

    #[test]
    fn a_pool_is_mapped_once_and_forgotten_at_its_last_release() {
        let name = format!("o7s-ipcpd-poolmap-{}", std::process::id());
        let _ = Pool::unlink(&name);
        let made = Pool::create(&name, &PoolConfig::small(), Access::Shared).expect("create");
        let mut map = PoolMap::new();
        let a = map.acquire(&name).expect("first use");
        let b = map.acquire(&name).expect("second use");
        assert!(Arc::ptr_eq(&a, &b), "mapped once");
        assert_eq!((map.uses(&name), map.len()), (2, 1));
        map.release(&name);
        assert_eq!(map.uses(&name), 1);
        map.release(&name);
        assert!(map.is_empty());
        map.release(&name);
        assert!(map.is_empty(), "an extra release does nothing");
        let c = map.acquire(&name).expect("a new use");
        assert!(!Arc::ptr_eq(&a, &c), "opened anew after the last release");
        map.release(&name);
        drop((a, b, c, made));
        let _ = Pool::unlink(&name);
        let missing = format!("{name}-missing");
        assert!(map.acquire(&missing).is_err());
        assert!(map.is_empty(), "nothing held after a failed open");
    }
}
