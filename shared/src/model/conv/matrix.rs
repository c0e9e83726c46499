//! Matrix products on slices, and the scratch buffers convolutions hold them in.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Values one scratch buffer (the unfolded input, a product's output, the 512-channel
/// stage's transformed kernels) holds at once (40 MiB): images are taken in chunks that fit.
pub(super) const SCRATCH_VALUES: usize = 10 << 20;

thread_local! {
    static SPARE_SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Buffers a convolution takes from the spares its thread keeps, and gives back:
/// fresh buffers of tens of MiB have their pages faulted in and zeroed by the kernel at
/// every call; with spares the forward pass at batch 250 ran 12 % faster
/// (docs/performance.md). A convolution takes up to three, so three are kept, those within
/// `SCRATCH_VALUES`: a thread holds at most 120 MiB between requests (Winograd's passes take
/// theirs on rayon's threads).
pub(super) struct Scratch {
    values: Vec<f32>,
    len: usize,
}

const SPARES_KEPT: usize = 3;

impl Scratch {
    /// `len` values left over from earlier use (NaN in tests): callers write every value
    /// they read. The smallest spare that fits, so that the other fits the other buffer.
    pub(super) fn take(len: usize) -> Self {
        let spare = SPARE_SCRATCH.with_borrow_mut(|spares| {
            // Largest first, so the last that fits is the smallest.
            let fitting = spares.iter().rposition(|values| values.len() >= len)?;
            Some(spares.remove(fitting))
        });
        let mut values = spare.unwrap_or_else(|| vec![0.0; len]);
        if cfg!(test) {
            values[..len].fill(f32::NAN);
        }
        Self { values, len }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let values = std::mem::take(&mut self.values);
        if values.len() <= SCRATCH_VALUES {
            // Not at all while the thread's storage is being torn down.
            let _ = SPARE_SCRATCH.try_with(|spares| {
                let mut spares = spares.borrow_mut();
                spares.push(values);
                spares.sort_by_key(|values| std::cmp::Reverse(values.len()));
                spares.truncate(SPARES_KEPT);
            });
        }
    }
}

impl Deref for Scratch {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.values[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.values[..self.len]
    }
}

/// A matrix in a slice: element (i, j) at `values[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub(super) values: &'a [f32],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
}

impl View<'_> {
    fn in_bounds(&self) -> bool {
        let last = || (self.rows - 1).checked_mul(self.row_stride)?.checked_add((self.cols - 1).checked_mul(self.col_stride)?);
        self.rows == 0 || self.cols == 0 || last().is_some_and(|last| last < self.values.len())
    }
}

#[derive(Clone, Copy)]
pub(super) enum Sum {
    Overwrite,
    Accumulate,
}

/// Output columns below which a product is not split between threads.
const MIN_COLUMNS_PER_THREAD: usize = 64;

/// A matrix's first element, shared by the threads that write its disjoint column blocks.
#[derive(Clone, Copy)]
struct Destination(*mut f32);

// SAFETY: `multiply` hands each thread its own columns of the matrix.
unsafe impl Send for Destination {}
unsafe impl Sync for Destination {}

impl Destination {
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `dst = lhs x rhs`, or `dst += lhs x rhs`, `dst` row-major. The output columns are split
/// into one block per thread, each a product of its own: gemm's own threading splits
/// rows, and ran the products with 64 rows (64 output channels) on one thread.
pub(super) fn multiply(dst: &mut [f32], lhs: View, rhs: View, sum: Sum) {
    let dst_fits = lhs.rows.checked_mul(rhs.cols) == Some(dst.len());
    assert!(lhs.cols == rhs.rows && dst_fits && lhs.in_bounds() && rhs.in_bounds(), "matrix shapes");
    let threads = rayon::current_num_threads().min(rhs.cols / MIN_COLUMNS_PER_THREAD).max(1);
    let width = rhs.cols.div_ceil(threads).max(1);
    let destination = Destination(dst.as_mut_ptr());
    (0..rhs.cols).into_par_iter().step_by(width).for_each(|first| {
        let cols = width.min(rhs.cols - first);
        // SAFETY: the asserts above keep every element gemm reads and writes in its slice,
        // and each thread writes only columns `first..first + cols` of `dst`.
        unsafe {
            gemm(
                lhs.rows,
                cols,
                lhs.cols,
                destination.at(first),
                1,
                rhs.cols as isize,
                matches!(sum, Sum::Accumulate),
                lhs.values.as_ptr(),
                lhs.col_stride as isize,
                lhs.row_stride as isize,
                rhs.values.as_ptr().wrapping_add(first * rhs.col_stride),
                rhs.col_stride as isize,
                rhs.row_stride as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    });
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in super::super) fn assert_close(got: &[f32], expected: &[f64], what: &str) {
        assert_eq!(got.len(), expected.len(), "{what}");
        for (got, expected) in got.iter().zip(expected) {
            assert!((*got as f64 - expected).abs() <= 1e-4 * (1.0 + expected.abs()), "{what}: {got} vs {expected}");
        }
    }

    /// Products wide enough to be split between threads (three blocks, one shorter),
    /// either operand read transposed, overwriting and accumulating, equal the sums of
    /// their definition.
    #[test]
    fn split_products_equal_their_definitions() {
        let (rows, depth, cols) = (5, 7, 3 * MIN_COLUMNS_PER_THREAD + 5);
        let lhs: Vec<f32> = (0..rows * depth).map(|i| (i % 11) as f32 - 5.0).collect();
        let rhs: Vec<f32> = (0..depth * cols).map(|i| (i % 13) as f32 / 4.0 - 1.5).collect();
        // The same matrices stored column by column, as the gradients read them.
        let transpose = |values: &[f32], rows: usize, cols: usize| (0..rows * cols).map(|i| values[(i % rows) * cols + i / rows]).collect::<Vec<_>>();
        let (lhs_transposed, rhs_transposed) = (transpose(&lhs, rows, depth), transpose(&rhs, depth, cols));
        let lhs_views = [
            View { values: &lhs, rows, cols: depth, row_stride: depth, col_stride: 1 },
            View { values: &lhs_transposed, rows, cols: depth, row_stride: 1, col_stride: rows },
        ];
        let rhs_views = [
            View { values: &rhs, rows: depth, cols, row_stride: cols, col_stride: 1 },
            View { values: &rhs_transposed, rows: depth, cols, row_stride: 1, col_stride: depth },
        ];
        let expected: Vec<f64> =
            (0..rows * cols).map(|index| (0..depth).map(|k| lhs[index / cols * depth + k] as f64 * rhs[k * cols + index % cols] as f64).sum()).collect();
        let doubled: Vec<f64> = expected.iter().map(|value| 2.0 * value).collect();
        rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("a thread pool").install(|| {
            for (lhs_view, rhs_view) in lhs_views.iter().flat_map(|lhs| rhs_views.iter().map(move |rhs| (*lhs, *rhs))) {
                let mut dst = vec![f32::NAN; rows * cols];
                multiply(&mut dst, lhs_view, rhs_view, Sum::Overwrite);
                assert_close(&dst, &expected, "overwritten");
                multiply(&mut dst, lhs_view, rhs_view, Sum::Accumulate);
                assert_close(&dst, &doubled, "accumulated");
            }
        });
    }

    /// A spare is reused at the length asked for, the smallest that fits; the three
    /// largest are kept, and none larger than `SCRATCH_VALUES`. (Stale values in reused buffers are what
    /// `products_equal_the_definitions_term_by_term` meets from its second product on.)
    #[test]
    fn scratch_buffers_are_reused_within_bounds() {
        let spares = || SPARE_SCRATCH.with_borrow(|spares| spares.iter().map(Vec::len).collect::<Vec<_>>());
        let first = Scratch::take(100);
        let address = first.as_ptr();
        drop(first);
        let again = Scratch::take(60);
        assert_eq!((again.len(), again.as_ptr()), (60, address), "the spare, at the length asked for");
        drop(again);
        drop([Scratch::take(10), Scratch::take(200), Scratch::take(300), Scratch::take(400)]);
        assert_eq!(spares(), [400, 300, 200], "the three largest");
        let smallest = SPARE_SCRATCH.with_borrow(|spares| spares[2].as_ptr());
        let fitting = Scratch::take(150);
        assert_eq!(fitting.as_ptr(), smallest, "the smallest spare that fits");
        assert!(fitting.iter().all(|value| value.is_nan()), "stale values, NaN in tests");
        drop(fitting);
        drop(Scratch::take(SCRATCH_VALUES + 1));
        assert_eq!(spares(), [400, 300, 200], "nothing larger than the bound");
    }
}
