// The IDX reader and Fashion-MNIST from Debian's dataset-fashion-mnist package.
#include <gtest/gtest.h>

#include <fstream>

#include "harness/data/idx.hpp"

using namespace apiary::data;

TEST(Idx, ReadsFashionMnistFromTheDebianPackage) {
  auto test = load_fashion_mnist("t10k");
  ASSERT_EQ(test.size(), 10000u);
  EXPECT_EQ(test.rows, 28u);
  EXPECT_EQ(test.cols, 28u);
  EXPECT_EQ(test.pixels.size(), 10000u * 28 * 28);
  std::vector<int> per_class(10);
  for (auto l : test.labels) ++per_class[l];
  for (int c = 0; c < 10; ++c) EXPECT_EQ(per_class[c], 1000) << "class " << c;  // the test split is balanced
  auto img = test.image(0);
  ASSERT_EQ(img.size(), 784u);
  EXPECT_GE(*std::min_element(img.begin(), img.end()), 0.0f);
  EXPECT_LE(*std::max_element(img.begin(), img.end()), 1.0f);
  EXPECT_GT(*std::max_element(img.begin(), img.end()), 0.5f);  // not blank
}

TEST(Idx, BadFilesAreClearErrors) {
  const std::string dir = testing::TempDir();
  auto expect = [&](const std::string& name, const std::string& bytes, const std::string& want) {
    const std::string path = dir + "/" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    try {
      read_idx(path);
      FAIL() << name << " accepted";
    } catch (const DataError& e) {
      EXPECT_EQ(std::string(e.what()), path + want);
    }
  };
  using namespace std::string_literals;
  expect("magic.idx", "\x01\x00\x08\x01"s, ": not an IDX file (bad magic)");
  expect("type.idx", "\x00\x00\x0d\x01\x00\x00\x00\x01"s, ": IDX element type 13 is not unsigned byte (8)");
  expect("short.idx", "\x00\x00\x08\x02\x00\x00"s, ": truncated IDX header");
  expect("count.idx", "\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02"s, ": header says 5 values, the file holds 2");
  EXPECT_THROW(read_idx(dir + "/none.idx"), DataError);
  EXPECT_THROW(load_fashion_mnist("valid"), DataError);
  // A plain (uncompressed) file reads as well.
  const std::string ok = dir + "/ok.idx";
  std::ofstream(ok, std::ios::binary) << "\x00\x00\x08\x02\x00\x00\x00\x02\x00\x00\x00\x03\x01\x02\x03\x04\x05\x06"s;
  auto a = read_idx(ok);
  EXPECT_EQ(a.dims, (std::vector<std::uint32_t>{2, 3}));
  EXPECT_EQ(a.values, (std::vector<std::uint8_t>{1, 2, 3, 4, 5, 6}));
}
