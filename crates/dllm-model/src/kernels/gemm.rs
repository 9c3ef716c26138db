//! Matrix products for the host loops: strided read-only views over slices (so transposed
//! tensors are read in place), `gemm` calls on them, and the shared output buffer that
//! parallel tasks write at disjoint places.

/// A read-only strided matrix over a slice: element `(i, j)` is `data[i * row + j * col]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Strided<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row: usize,
    col: usize,
}

impl<'a> Strided<'a> {
    /// `rows x cols`, row-major and contiguous.
    pub(super) fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::with_strides(data, rows, cols, cols, 1)
    }

    /// `rows x cols` with rows `row` apart and columns `col` apart.
    pub(super) fn with_strides(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row: usize,
        col: usize,
    ) -> Self {
        let last = (rows.max(1) - 1) * row + (cols.max(1) - 1) * col;
        assert!(
            rows == 0 || cols == 0 || last < data.len(),
            "strided view out of bounds"
        );
        Self {
            data,
            rows,
            cols,
            row,
            col,
        }
    }

    /// `[rows, cols]`.
    pub(super) fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Appends row `i` to `out`.
    #[inline]
    pub(super) fn push_row(&self, i: usize, out: &mut Vec<f32>) {
        let first = i * self.row;
        if self.col == 1 {
            out.extend_from_slice(&self.data[first..first + self.cols]);
        } else {
            out.extend((0..self.cols).map(|j| self.data[first + j * self.col]));
        }
    }

    /// The transpose (a view, nothing moves).
    pub(super) fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row: self.col,
            col: self.row,
            ..self
        }
    }
}

/// A read-only `[batch, heads, rows, head_dim]` view with arbitrary non-negative strides, so
/// that attention reads a transposed tensor (`v` after `swap_dims`) without copying it.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeadsView<'a> {
    data: &'a [f32],
    offset: usize,
    dims: [usize; 4],
    strides: [usize; 4],
}

impl<'a> HeadsView<'a> {
    /// Element `[b, h, r, c]` at `data[offset + b s0 + h s1 + r s2 + c s3]`.
    pub(super) fn new(
        data: &'a [f32],
        offset: usize,
        dims: [usize; 4],
        strides: [usize; 4],
    ) -> Self {
        let last: usize = dims
            .iter()
            .zip(&strides)
            .map(|(&d, &s)| d.saturating_sub(1) * s)
            .sum();
        assert!(
            dims.contains(&0) || offset + last < data.len(),
            "heads view out of bounds"
        );
        Self {
            data,
            offset,
            dims,
            strides,
        }
    }

    /// `[batch, heads, rows, head_dim]`.
    pub(super) fn dims(&self) -> [usize; 4] {
        self.dims
    }

    /// The `[rows, head_dim]` matrix of sequence `b`, head `h`.
    pub(super) fn matrix(&self, b: usize, h: usize) -> Strided<'a> {
        let base = self.offset + b * self.strides[0] + h * self.strides[1];
        Strided::with_strides(
            &self.data[base..],
            self.dims[2],
            self.dims[3],
            self.strides[2],
            self.strides[3],
        )
    }
}

/// `dst <- scale * a b` on one thread, `dst` row-major with rows `dst_row` apart.
pub(super) fn gemm_into(dst: &mut [f32], dst_row: usize, a: Strided, b: Strided, scale: f32) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n) = (a.rows, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_row + n <= dst.len(),
        "gemm output out of bounds"
    );
    if a.cols == 0 {
        for i in 0..m {
            dst[i * dst_row..i * dst_row + n].fill(0.0);
        }
        return;
    }
    // SAFETY: `Strided::with_strides` and the assert above keep every element gemm reads or
    // writes inside its slice; `dst` is borrowed mutably, the inputs immutably.
    unsafe {
        gemm_to_ptr(
            dst.as_mut_ptr(),
            dst_row,
            a,
            b,
            scale,
            gemm::Parallelism::None,
        )
    }
}

/// `dst <- scale * a b` through a raw pointer: `a.rows` rows of `b.cols` values, `dst_row`
/// apart, written without being read.
///
/// # Safety
///
/// `a.cols == b.rows`, and `dst` is valid for those writes, which nothing else reads or writes
/// during the call. The inputs are in bounds by construction (`Strided::with_strides`).
#[inline]
pub(super) unsafe fn gemm_to_ptr(
    dst: *mut f32,
    dst_row: usize,
    a: Strided,
    b: Strided,
    scale: f32,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's contract above.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst,
            1,
            dst_row as isize,
            false,
            a.data.as_ptr(),
            a.col as isize,
            a.row as isize,
            b.data.as_ptr(),
            b.col as isize,
            b.row as isize,
            0.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// An output buffer written by parallel tasks at disjoint places.
#[derive(Clone, Copy)]
pub(super) struct SharedOut(pub(super) *mut f32);

// SAFETY: the tasks sharing a `SharedOut` write disjoint elements and the buffer outlives them.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}
