#include "eformer/io/png.h"

#include <gtest/gtest.h>

#include "eformer/core/error.h"

#include "../test_util.h"

namespace eformer::io {
namespace {

using testing::error_of;

TEST(Png, ChecksumsMatchKnownValues) {
  const std::string s = "123456789";  // the check value of both standards' test vectors
  EXPECT_EQ(crc32(reinterpret_cast<const uint8_t*>(s.data()), s.size()), 0xCBF43926u);
  const std::string w = "Wikipedia";
  EXPECT_EQ(adler32(reinterpret_cast<const uint8_t*>(w.data()), w.size()), 0x11E60398u);
}

TEST(Png, RoundTripsSmallAndMultiBlockImages) {
  for (auto [w, h] : {std::pair<int64_t, int64_t>{28, 28}, {1, 1}, {300, 250}}) {  // 300 x 250: two stored blocks
    GreyImage img{w, h, std::vector<uint8_t>(size_t(w * h))};
    for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = uint8_t(i * 31 + i / 7);
    std::string bytes = encode_png(img);
    GreyImage back = decode_png(bytes);
    EXPECT_EQ(back.width, w);
    EXPECT_EQ(back.height, h);
    EXPECT_EQ(back.pixels, img.pixels);
  }
}

TEST(Png, RejectsCorruptFilesAndBadImages) {
  GreyImage img{4, 3, std::vector<uint8_t>(12, 7)};
  std::string bytes = encode_png(img);
  EXPECT_NE(error_of<IOError>([&] { decode_png("GIF89a", "x.png"); }).find("no PNG signature"), std::string::npos);
  std::string flipped = bytes;
  flipped[40] ^= 1;  // inside the IDAT data
  EXPECT_NE(error_of<IOError>([&] { decode_png(flipped, "x.png"); }).find("CRC mismatch"), std::string::npos);
  EXPECT_NE(error_of<IOError>([&] { decode_png(bytes.substr(0, 30), "x.png"); }).find("truncated"),
            std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { encode_png(GreyImage{4, 3, std::vector<uint8_t>(11)}); }).find("11 pixels"),
            std::string::npos);
  EXPECT_NE(error_of<ValueError>([] { encode_png(GreyImage{0, 3, {}}); }).find("outside"), std::string::npos);
}

}  // namespace
}  // namespace eformer::io
