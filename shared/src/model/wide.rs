//! Loops of our CPU kernels compiled for the widest vectors the CPU has, chosen at run time.
//!
//! The binary targets baseline x86-64 so that it runs anywhere, and there the kernels'
//! element loops (Winograd's transforms, BatchNorm's passes) compiled to 4-wide or scalar
//! code, in closures that took a third of a training step's profile (docs/performance.md).
//! gemm picks its own kernels the same way.

/// `fn $name`, whose body is compiled three times, for AVX-512, for AVX2 and for the
/// baseline, and runs in the widest form the CPU supports. The body is a function of its own,
/// inlined into each: closures passed to it would not be inlined reliably, and only inlined
/// code takes the caller's features. Arguments are `name: Type` (no patterns, no generics),
/// and none should be SIMD types, which would be passed differently in each form; the
/// function's own items are named `body`, `avx2` and `avx512`.
macro_rules! wide_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::model::wide::allows($crate::model::wide::Width::Avx512) && std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (and so, in every CPU that has it, the
                    // AVX2, FMA and F16C that Rust's `avx512f` implies).
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::model::wide::allows($crate::model::wide::Width::Avx2) && std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has the feature.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use wide_fn;

/// The wider forms `wide_fn!` compiles besides the baseline.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) enum Width {
    Avx2 = 1,
    Avx512 = 2,
}

/// Whether `wide_fn!` may take the `width` form, if the CPU has it.
#[cfg(all(target_arch = "x86_64", not(test)))]
#[inline(always)]
pub(crate) fn allows(_: Width) -> bool {
    true
}

/// Tests cap the width, so that every form runs on a CPU that has the widest.
#[cfg(all(target_arch = "x86_64", test))]
pub(crate) fn allows(width: Width) -> bool {
    width as u8 <= tests::CAP.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::{Mutex, PoisonError};

    /// The widest form allowed, as [`super::Width`] (0: the baseline). Process-wide, as the
    /// kernels run on rayon's threads: a test running beside [`in_every_width`] may take a
    /// narrower form than it would, which computes the same values.
    pub(super) static CAP: AtomicU8 = AtomicU8::new(u8::MAX);

    /// `check` with each form this CPU runs in turn (named), one caller at a time, then every
    /// form allowed again, a panic in `check` included.
    pub(crate) fn in_every_width(mut check: impl FnMut(&str)) {
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        struct Uncapped;
        impl Drop for Uncapped {
            fn drop(&mut self) {
                CAP.store(u8::MAX, Ordering::Relaxed);
            }
        }
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let _uncapped = Uncapped;
        for (cap, name) in forms() {
            CAP.store(cap, Ordering::Relaxed);
            check(name);
        }
    }

    fn forms() -> Vec<(u8, &'static str)> {
        #[allow(unused_mut)]
        let mut forms = vec![(0, "baseline")];
        #[cfg(target_arch = "x86_64")]
        for (width, feature, name) in [
            (super::Width::Avx2, std::arch::is_x86_feature_detected!("avx2"), "AVX2"),
            (super::Width::Avx512, std::arch::is_x86_feature_detected!("avx512f"), "AVX-512"),
        ] {
            if feature {
                forms.push((width as u8, name));
            }
        }
        forms
    }
}
