//! The matrices of F(4x4, 3x3) (Lavin and Gray, 2016, with the points 0, ±1, ±2 and ∞), each
//! as a function of one column, applied to both sides of a tile by [`both_sides`]: on single
//! values, or on [`Lanes`] of kernels or blocks at once.

use std::ops::{Add, Mul, Sub};

/// Outputs per block side.
pub(super) const BLOCK: usize = 4;

/// Inputs per tile side: a block and the kernel's reach.
pub(super) const SIDE: usize = BLOCK + 2;

/// Values of a transformed tile.
pub(super) const TILE: usize = SIDE * SIDE;

/// What the matrices apply to.
pub(super) trait Value: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<f32, Output = Self> {}

impl<T: Copy + Add<Output = T> + Sub<Output = T> + Mul<f32, Output = T>> Value for T {}

/// `N` values transformed at once, one per vector lane.
#[derive(Clone, Copy)]
pub(super) struct Lanes<const N: usize>(pub(super) [f32; N]);

impl<const N: usize> Lanes<N> {
    /// The first `N` of `values`, zero past their end.
    #[inline(always)]
    pub(super) fn load(values: &[f32]) -> Self {
        match values.get(..N) {
            Some(values) => Lanes(values.try_into().expect("N values")),
            None => {
                let mut lanes = [0.0; N];
                lanes[..values.len()].copy_from_slice(values);
                Lanes(lanes)
            }
        }
    }

    /// The first `lanes` into `out`.
    #[inline(always)]
    pub(super) fn store(&self, out: &mut [f32], lanes: usize) {
        // The full store is a single vector one.
        if lanes == N {
            out[..N].copy_from_slice(&self.0);
        } else {
            out[..lanes].copy_from_slice(&self.0[..lanes]);
        }
    }
}

impl<const N: usize> Add for Lanes<N> {
    type Output = Self;
    #[inline(always)]
    fn add(mut self, other: Self) -> Self {
        for (value, other) in self.0.iter_mut().zip(other.0) {
            *value += other;
        }
        self
    }
}

impl<const N: usize> Sub for Lanes<N> {
    type Output = Self;
    #[inline(always)]
    fn sub(mut self, other: Self) -> Self {
        for (value, other) in self.0.iter_mut().zip(other.0) {
            *value -= other;
        }
        self
    }
}

impl<const N: usize> Mul<f32> for Lanes<N> {
    type Output = Self;
    #[inline(always)]
    fn mul(mut self, factor: f32) -> Self {
        for value in &mut self.0 {
            *value *= factor;
        }
        self
    }
}

/// `F b Fᵀ` of a square `b`, where `f` multiplies a column by F: `f` down every column, then
/// across every row of the result. In plain loops, not `array::from_fn`: its closures were not
/// always inlined into the transforms' wide forms, and ran without their vector features.
#[inline(always)]
pub(super) fn both_sides<T: Value, const N: usize, const M: usize>(b: [[T; N]; N], f: impl Fn([T; N]) -> [T; M]) -> [[T; M]; M] {
    // Column j of F b.
    let mut columns = [[b[0][0]; M]; N];
    for (j, column) in columns.iter_mut().enumerate() {
        let mut inputs = b[0];
        for (input, row) in inputs.iter_mut().zip(&b) {
            *input = row[j];
        }
        *column = f(inputs);
    }
    let mut out = [columns[0]; M];
    for (r, out) in out.iter_mut().enumerate() {
        let mut inputs = [b[0][0]; N];
        for (input, column) in inputs.iter_mut().zip(&columns) {
            *input = column[r];
        }
        *out = f(inputs);
    }
    out
}

/// `Bᵀ d`, a column of an input tile transformed: Bᵀ = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0],
/// [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]].
#[inline(always)]
pub(super) fn input_side<T: Value>([d0, d1, d2, d3, d4, d5]: [T; SIDE]) -> [T; SIDE] {
    let (even, odd) = (d4 - d2 * 4.0, d3 - d1 * 4.0);
    let (near_even, near_odd) = (d4 - d2, (d3 - d1) * 2.0);
    [d0 * 4.0 - d2 * 5.0 + d4, even + odd, even - odd, near_even + near_odd, near_even - near_odd, d1 * 4.0 - d3 * 5.0 + d5]
}

/// `Aᵀ m`, a column of a transformed product back to its block's outputs: Aᵀ = [[1, 1, 1, 1, 1, 0],
/// [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]].
#[inline(always)]
pub(super) fn output_side<T: Value>([m0, m1, m2, m3, m4, m5]: [T; SIDE]) -> [T; BLOCK] {
    let (sum, difference, far_sum, far_difference) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [m0 + sum + far_sum, difference + far_difference * 2.0, sum + far_sum * 4.0, difference + far_difference * 8.0 + m5]
}

/// `A y`, a column of an output gradient's block out to a tile: the transpose of [`output_side`].
#[inline(always)]
pub(super) fn gradient_side<T: Value>([y0, y1, y2, y3]: [T; BLOCK]) -> [T; SIDE] {
    let (even, odd) = (y0 + y2, y1 + y3);
    let (far_even, far_odd) = (y0 + y2 * 4.0, y1 * 2.0 + y3 * 8.0);
    [y0, even + odd, even - odd, far_even + far_odd, far_even - far_odd, y3]
}

/// `G k`, a column of a 3x3 kernel out to a tile: G = [[¼, 0, 0], [-⅙, -⅙, -⅙], [-⅙, ⅙, -⅙],
/// [1/24, 1/12, ⅙], [1/24, -1/12, ⅙], [0, 0, 1]].
#[inline(always)]
pub(super) fn kernel_side<T: Value>([k0, k1, k2]: [T; 3]) -> [T; SIDE] {
    let (outer, far_outer, far_middle) = (k0 + k2, k0 * (1.0 / 24.0) + k2 * (1.0 / 6.0), k1 * (1.0 / 12.0));
    [k0 * 0.25, (outer + k1) * (-1.0 / 6.0), (outer - k1) * (-1.0 / 6.0), far_outer + far_middle, far_outer - far_middle, k2]
}

/// `Gᵀ u`, a column of a transformed kernel's gradient back to the kernel's: the transpose of
/// [`kernel_side`].
#[inline(always)]
pub(super) fn kernel_gradient_side<T: Value>([u0, u1, u2, u3, u4, u5]: [T; SIDE]) -> [T; 3] {
    let (sum, difference, far_sum, far_difference) = (u1 + u2, u2 - u1, u3 + u4, u3 - u4);
    [u0 * 0.25 - sum * (1.0 / 6.0) + far_sum * (1.0 / 24.0), difference * (1.0 / 6.0) + far_difference * (1.0 / 12.0), (far_sum - sum) * (1.0 / 6.0) + u5]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Products of small integers and sixths, exact in f32 to well within the tolerance.
    fn assert_near(got: f32, expected: f32, what: &str) {
        assert!((got - expected).abs() <= 1e-5 * expected.abs().max(1.0), "{what}: {got} against {expected}");
    }

    /// Each tile of outputs is the 3x3 convolution of its tile of inputs (`Aᵀ[(G k Gᵀ) ⊙ (Bᵀ d B)]A`),
    /// and the gradient sides are the transposes: `⟨A y, m⟩ = ⟨y, Aᵀ m⟩`, `⟨Gᵀ u, k⟩ = ⟨u, G k⟩`.
    #[test]
    fn the_tile_of_outputs_is_the_convolution_of_the_tile_of_inputs() {
        let value = |i: usize, seed: usize| ((i * seed % 19) as f32 - 9.0) / 4.0;
        let d: [[f32; SIDE]; SIDE] = std::array::from_fn(|i| std::array::from_fn(|j| value(SIDE * i + j, 7)));
        let k: [[f32; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| value(3 * i + j, 11)));
        let (inputs, kernel) = (both_sides(d, input_side), both_sides(k, kernel_side));
        let products: [[f32; SIDE]; SIDE] = std::array::from_fn(|i| std::array::from_fn(|j| inputs[i][j] * kernel[i][j]));
        let outputs = both_sides(products, output_side);
        for (y, row) in outputs.iter().enumerate() {
            for (x, &output) in row.iter().enumerate() {
                let expected: f32 = (0..9).map(|tap| d[y + tap / 3][x + tap % 3] * k[tap / 3][tap % 3]).sum();
                assert_near(output, expected, &format!("output ({y}, {x})"));
            }
        }
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f32>();
        let (y, m): ([f32; BLOCK], [f32; SIDE]) = (std::array::from_fn(|i| value(i, 5)), std::array::from_fn(|i| value(i, 13)));
        assert_near(dot(&gradient_side(y), &m), dot(&y, &output_side(m)), "A transposed");
        let (u, k): ([f32; SIDE], [f32; 3]) = (std::array::from_fn(|i| value(i, 3)), std::array::from_fn(|i| value(i, 17)));
        assert_near(dot(&kernel_gradient_side(u), &k), dot(&u, &kernel_side(k)), "G transposed");
        let lanes = Lanes::<2>([d[0][0], d[1][1]]);
        let (by_lanes, by_values) = (input_side([lanes; SIDE]), [input_side([d[0][0]; SIDE]), input_side([d[1][1]; SIDE])]);
        for (side, lanes) in by_lanes.iter().enumerate() {
            assert_eq!(lanes.0, [by_values[0][side], by_values[1][side]], "lanes, value {side}");
        }
    }
}
