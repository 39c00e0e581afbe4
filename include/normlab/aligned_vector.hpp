// std::vector whose storage starts on a 64-byte cache line (an AVX-512
// vector). The fast kernels write rows with aligned non-temporal stores; on
// malloc's 16-byte alignment every row of a large tensor began with a scalar
// head and ended with a tail written by plain stores, and the half-written
// lines at both ends cost 15-40 % of BatchNorm's forward (docs/performance.md).
// PyTorch's CPU allocator aligns to 64 bytes as well.
#pragma once
#include <cstddef>
#include <new>
#include <vector>

namespace normlab {

inline constexpr std::size_t kTensorAlignment = 64;

template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{kTensorAlignment}));
  }
  void deallocate(T* p, std::size_t) noexcept {
    ::operator delete (p, std::align_val_t{kTensorAlignment});
  }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const noexcept {
    return true;
  }
};

template <typename T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

}  // namespace normlab
